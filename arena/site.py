"""The standing board as a static, self-contained site: ``index.html`` with one tab per threat model, sortable
columns, a filter box, every flag with its reason and provenance, and each run's own report under ``reports/``.
No server and nothing fetched: open ``index.html`` from disk or publish the folder as it is.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from arena.leaderboard import board
from arena.pages import render_page
from arena.report import write_report
from arena.standing import Entry, Source, Threat, data_label, load, percent, weights_tag
from arena.store import Store
from arena.untrusted import child
from arena.version import __version__

#: The columns in order, and whether each sorts as a number (flags sit folded under their row).
_COLUMNS = [("rank", True), ("model", False), ("defense", False), ("kind", False), ("clean", True),
            ("best known", True), ("achieved by", False), ("samples", True), ("runs", False),
            ("passes/sample", True), ("verified", False), ("provenance", False)]


def _provenance(source: Source) -> list[tuple[str, str]]:
    """One run's provenance, field by field."""
    return [("run", source.run), ("results folder", source.results), ("scenario", source.scenario),
            ("scenario hash", source.scenario_digest), ("arena", source.arena_version),
            ("weights key", source.weights_key or "-"), ("weights from", source.weights_source or "-"),
            ("data fingerprint", source.data_fingerprint or "-"),
            ("seed", str(source.seed)), ("device", source.device), ("precision", source.precision),
            ("date", source.started_at), ("status", source.status), ("attacks", ", ".join(source.attacks)),
            ("suites", ", ".join(source.suites) or "-"),
            ("passes/sample", "-" if source.passes_per_sample is None else f"{source.passes_per_sample:.1f}")]


def _entry(entry: Entry, shared_label: bool) -> dict[str, Any]:
    """What the template shows of one entry; ``shared_label`` when another entry of its table has the same label,
    so a short weights hash tells them apart."""
    reported = entry.kind == "reported"
    return {
        "classes": " ".join(c for c in (entry.kind, "flagged" if entry.flags and not reported else "") if c),
        "rank": entry.rank, "model": entry.model, "defense": entry.defense, "kind": entry.kind,
        "tag": weights_tag(entry) if shared_label else "",
        "numbers": [(percent(value), value) for value in (entry.clean_accuracy, entry.worst_case)],
        "achieved_by": [(attack, run) for attack, _, run in (a.partition(" @ ") for a in entry.achieved_by)],
        "samples": entry.samples, "sample_set": data_label(entry.sample_set) if entry.sample_set else "",
        "runs": [(Path(entry.reported.get("file", "")).name, None)] if reported
        else [(s.run, s.report) for s in entry.sources],
        "passes": entry.passes, "flags": entry.flags, "verification": entry.verification,
        "external": entry.external, "name": entry.name,
        "provenance": [[(str(k), str(v)) for k, v in entry.reported.items()]] if reported
        else [_provenance(s) for s in entry.sources],
    }


def page(board_: dict[Threat, list[Entry]], folders: list[str]) -> str:
    """The whole site's ``index.html``: one section per threat model, switched by tabs."""
    threats = []
    for threat, entries in board_.items():
        labels = Counter((e.model, e.defense) for e in entries)
        threats.append({"name": str(threat), "measured": sum(e.kind == "measured" for e in entries),
                        "entries": [_entry(e, labels[e.model, e.defense] > 1) for e in entries]})
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    meta = (f"best known worst case per entry over every valid attack of every run on the same images · "
            f"{len(folders)} results folder(s): {', '.join(folders)} · arena {__version__} · {stamp}")
    return render_page("board.html", meta=meta, threats=threats, columns=_COLUMNS)


def write_site(stores: list[Store], board_: dict[Threat, list[Entry]], out: Path) -> Path:
    """Write ``out/index.html`` and each run's report into ``out/reports/<run id>/``; returns the index page."""
    wanted = {s.run for entries in board_.values() for e in entries for s in e.sources}
    for store, run in load(stores):
        if run.id in wanted:
            write_report(store, run, board(store, run), child(out, "reports", run.id))
    for entries in board_.values():
        for source in (s for e in entries for s in e.sources):
            source.report = f"reports/{source.run}/leaderboard.html"
    index = child(out, "index.html")
    index.write_text(page(board_, [str(s.results_dir) for s in stores]), encoding="utf-8")
    return index
