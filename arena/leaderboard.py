"""Turn stored matchups into a leaderboard: per model × defense, clean and robust accuracy, the per-sample worst case
over every valid attack (the rank), and trust flags (``arena.flags``) where a number should not be believed as it
stands. ``arena.formats`` renders the rows as text, Markdown, CSV, JSON or an HTML page.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from arena.flags import sweep_flags, trust_flags, worst_case
from arena.formats import Table, render
from arena.records import Matchup, Run, Status
from arena.store import Store


@dataclass
class Row:
    """One model × defense of one run: clean accuracy, robust accuracy per attack, worst case, rank and trust flags."""

    model: str
    defense: str
    samples: int
    clean_accuracy: float | None
    attacks: dict[str, float | str] = field(default_factory=dict)
    worst_case: float | None = None
    rank: int | None = None
    flags: list[str] = field(default_factory=list)
    #: ``full``, ``cascade``, or ``full; cascade: <suite>`` when only a suite cascaded.
    evaluation: str = "full"
    #: The suites (e.g. ``fast``) whose members produced the row, comma-separated; empty for single attacks only.
    suite: str = ""
    #: Network passes (forward + backward) per evaluated sample over all of the row's attacks, and per attack.
    passes: float | None = None
    attack_passes: dict[str, float | None] = field(default_factory=dict)
    threat: str = ""
    run: str = ""
    arena_version: str = ""


def _evaluation(group: list[Matchup]) -> str:
    """How a row was evaluated: ``full``, ``cascade``, or ``full; cascade: <suite>`` when only suites cascaded."""
    cascaded = [m for m in group if m.cascade_after]
    if not cascaded:
        return "full"
    if all(m.cascade_after or m is group[0] for m in group):
        return "cascade"
    suites = sorted({m.suite for m in cascaded if m.suite})
    return "full; cascade: " + ", ".join(suites) if suites else "mixed"


def _actively_tested(group: list[Matchup]) -> str:
    """``; binarization: <attack> passed/valid, ...`` for a row whose matchups ran the binarization test, else
    ``''``."""
    tested = [(m.attack, m.checks["binarization"]) for m in group if "tested" in m.checks.get("binarization", {})]
    return ("; binarization: " + ", ".join(f"{a} {t['passed']}/{t['tested'] - t['setup_failed']}" for a, t in tested)
            if tested else "")


def _suites(group: list[Matchup]) -> dict[str, float | str]:
    """Each suite's worst case over its members, or the status of a member that did not finish."""
    members: dict[str, list[Matchup]] = {}
    for m in group:
        if m.suite:
            members.setdefault(m.suite, []).append(m)
    result: dict[str, float | str] = {}
    for suite, ms in members.items():
        failed, worst = [m.status for m in ms if m.status.failed], worst_case(ms)
        result[suite] = failed[0] if failed else float(worst.mean()) if worst is not None else Status.SKIPPED
    return result


def total_passes(matchups: Iterable[Matchup]) -> float | None:
    """Passes per sample over all of these attacks; None when any was not counted (or none was played)."""
    counted = [m.passes_per_sample for m in matchups]
    known = [c for c in counted if c is not None]
    return float(sum(known)) if counted and len(known) == len(counted) else None


def rows(matchups: list[Matchup], run: Run | None = None) -> list[Row]:
    """Group matchups by model × defense; rank by worst-case robust accuracy the rows whose matchups are all valid
    and present (equal worst cases share a rank and are listed by clean accuracy). A matchup the run set out to play
    but does not hold (an interrupted run) shows as ``missing``, and its row is not ranked."""
    groups: dict[tuple[str, str], list[Matchup]] = {}
    missing: dict[tuple[str, str], list[str]] = {}
    played = {(m.model, m.defense, m.attack) for m in matchups}
    for model, defense, attack in run.expected if run else ():
        groups.setdefault((model, defense), [])
        if (model, defense, attack) not in played:
            missing.setdefault((model, defense), []).append(attack)
    for m in matchups:
        groups.setdefault((m.model, m.defense), []).append(m)
    table = []
    for (model, defense), group in groups.items():
        clean = next((m.clean_accuracy for m in group if m.clean_accuracy is not None), None)
        combined = worst_case(group)
        absent = missing.get((model, defense), [])
        flags = trust_flags(group) + ([f"{len(absent)} matchup(s) missing ({', '.join(absent)}): the run was "
                                       "interrupted; run the same command again to resume"] if absent else [])
        table.append(Row(
            model, defense, group[0].samples if group else (run.samples if run else 0), clean,
            attacks={**{m.attack: m.robust_accuracy if m.robust_accuracy is not None and m.status == Status.OK
                        else m.status for m in group},
                     **_suites(group), **dict.fromkeys(absent, "missing")},
            worst_case=float(combined.mean()) if combined is not None else None,
            flags=flags, evaluation=_evaluation(group) + _actively_tested(group),
            suite=", ".join(sorted({m.suite for m in group if m.suite})),
            passes=total_passes(group),
            attack_passes={m.attack: m.passes_per_sample for m in group},
            threat=str(run.threat) if run else "", run=run.id if run else "",
            arena_version=run.arena_version if run else "",
        ))
    rankable = sorted((r for r in table
                       if all(not isinstance(v, str) or v == Status.SKIPPED for v in r.attacks.values())),
                      key=lambda r: (-(r.worst_case or 0.0), -(r.clean_accuracy or 0.0)))
    for position, row in enumerate(rankable):
        tied = position and row.worst_case == rankable[position - 1].worst_case
        row.rank = rankable[position - 1].rank if tied else position + 1  # equal worst cases share a rank
    return rankable + [r for r in table if r.rank is None]


def curves(store: Store, run: Run) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """Worst-case robust accuracy against ε per model × defense, from the latest run at each ε of this scenario file
    in the run's norm."""
    latest: dict[float, str] = {}
    for other in store.runs(scenario_digest=run.scenario_digest):
        if other.threat.norm == run.threat.norm:
            latest.setdefault(other.threat.eps, other.id)
    points: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for eps, run_id in latest.items():
        for row in rows(store.matchups(run_id)):
            if row.worst_case is not None:
                points.setdefault((row.model, row.defense), []).append((eps, row.worst_case))
    return points


def sweep_runs(store: Store, run: Run) -> list[Run]:
    """The latest run at each threat model of ``run``'s scenario file (every ε of a sweep), by norm and ε."""
    latest: dict[tuple[str, float], Run] = {}
    for other in store.runs(scenario_digest=run.scenario_digest):
        latest.setdefault((other.threat.norm, other.threat.eps), other)
    return [latest[key] for key in sorted(latest)]


def leaderboards(store: Store, runs: list[Run], fmt: str = "table", wide: bool = False) -> tuple[str, str | None]:
    """The leaderboard of each run (one per ε of a sweep, from ``sweep_runs``) in a text or Markdown page; the other
    formats hold one table, so they show the latest run, and the note (else None) says which."""
    latest = max(runs, key=lambda r: (r.started_at, r.id))
    note = None
    if len(runs) > 1 and fmt not in ("table", "md"):
        others = ", ".join(f"{r.id} ({r.threat})" for r in runs if r.id != latest.id)
        note = (f"showing run {latest.id} ({latest.threat}), the latest; the same scenario's runs at other threat "
                f"models: {others} (--run ID shows one)")
        runs = [latest]
    text = "\n\n".join(render(leaderboard_table(r, board(store, r)), fmt, wide=wide) for r in runs)
    if len(runs) > 1:
        text = (f"{latest.scenario}: {len(runs)} runs, one per threat model ({', '.join(str(r.threat) for r in runs)});"
                f" --run ID shows one\n\n{text}")
    return text, note


def board(store: Store, run: Run, matchups: list[Matchup] | None = None) -> list[Row]:
    """A run's rows with every trust flag, the ε-sweep one included (from ``matchups`` when already loaded)."""
    table = rows(store.matchups(run.id) if matchups is None else matchups, run)
    clean = {(row.model, row.defense): row.clean_accuracy for row in table}
    flagged = sweep_flags(curves(store, run), clean, run.threat.norm)
    for row in table:
        row.flags += flagged.get((row.model, row.defense), [])
    return table


#: What the default text view of a leaderboard leaves out: the title says the run's, the rest is detail.
DETAILS = {"suite", "passes/sample", "evaluation", "samples", "threat", "run", "arena"}


def leaderboard_table(run: Run, table: list[Row]) -> Table:
    """A run's rows as a renderable table, titled with what every row shares (run, scenario, threat, samples)."""
    attacks = list(dict.fromkeys(a for r in table for a in r.attacks))
    records = [{
        "rank": r.rank, "model": r.model, "defense": r.defense, "clean": r.clean_accuracy,
        **{a: r.attacks.get(a) for a in attacks}, "worst case": r.worst_case,
        "suite": r.suite or None, "passes/sample": None if r.passes is None else round(r.passes, 1),
        "evaluation": r.evaluation,
        "samples": r.samples, "threat": r.threat, "run": r.run, "arena": r.arena_version, "flags": r.flags,
        "passes per attack": r.attack_passes,
    } for r in table]
    title = (f"run {run.id} · scenario {run.scenario} · {run.threat} · {run.samples} samples · "
             f"arena {run.arena_version} · {run.status}")
    columns = ["rank", "model", "defense", "clean", *attacks, "worst case", "suite", "passes/sample", "evaluation",
               "samples", "threat", "run", "arena", "flags"]
    return Table(title, columns, records, {"clean", "worst case", *attacks}, DETAILS)


def compare_table(run_a: Run, rows_a: list[Row], run_b: Run, rows_b: list[Row]) -> Table:
    """The model × defense rows both runs have: each number in A, in B, and B − A."""
    by_key = {(r.model, r.defense): r for r in rows_b}
    records, percent = [], set()
    for a in rows_a:
        b = by_key.get((a.model, a.defense))
        if b is None:
            continue
        record: dict[str, Any] = {"model": a.model, "defense": a.defense}
        shared = [k for k in a.attacks if k in b.attacks]
        values = [("clean", a.clean_accuracy, b.clean_accuracy), *((k, a.attacks[k], b.attacks[k]) for k in shared),
                  ("worst case", a.worst_case, b.worst_case)]
        for name, x, y in values:
            change = y - x if isinstance(x, float | int) and isinstance(y, float | int) else None
            record.update({f"{name} A": x, f"{name} B": y, f"{name} Δ": change})
            percent |= {f"{name} A", f"{name} B", f"{name} Δ"}
        records.append(record)
    columns = list(dict.fromkeys(k for r in records for k in r))
    sides = (("A", run_a), ("B", run_b))
    title = " · ".join(f"{side} = run {run.id} ({run.scenario}, {run.threat})" for side, run in sides)
    return Table(title, columns, records, percent)


def write_summary(store: Store, run: Run, table: list[Row]) -> Path:
    """Write ``runs/<run id>.json`` beside the store: the run, every matchup's numbers, and the leaderboard."""
    run_id = run.id
    path = store.results_dir / "runs" / f"{run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "run": run.summary(),
        "matchups": [m.summary() for m in store.matchups(run_id)],
        "leaderboard": [asdict(r) for r in table],
    }
    path.write_text(json.dumps(summary, indent=2))
    return path
