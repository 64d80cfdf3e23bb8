"""Turn stored matchups into a leaderboard: per model × defense, clean and robust accuracy, the per-sample worst case
over every valid attack (the rank), and trust flags where a number should not be believed as it stands.

The same rows are written as a text table, Markdown, CSV, JSON or a self-contained HTML page.
"""

from __future__ import annotations

import csv
import html
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arena import checks
from arena.checks import TOLERANCE
from arena.records import Matchup, Run, Status
from arena.store import Store

FORMATS = ("table", "md", "csv", "json", "html")
#: A transfer attack's robust accuracy this far above the white-box worst case means the robustness is only apparent.
TRANSFER_GAP = 0.20


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


def worst_case(matchups: list[Matchup]) -> np.ndarray | None:
    """Per-sample robustness over every valid attack: a sample counts only if every attack failed on it."""
    masks = [m.robust_correct for m in matchups if m.status == Status.OK]
    return np.logical_and.reduce(masks) if masks else None


def _plugin(m: Matchup) -> str | None:
    return m.params.get("attack", {}).get("plugin")


def _robust(m: Matchup) -> float:
    return m.robust_accuracy


def _same_samples(a: Matchup, b: Matchup) -> bool:
    """Whether two matchups attacked all the same initially-correct samples, so their accuracies compare directly
    (a cascaded attack's accuracy is cumulative; ``arena.checks`` compares those sample by sample)."""
    return not a.cascade_after and not b.cascade_after and np.array_equal(a.attacked_mask, b.attacked_mask)


def trust_flags(group: list[Matchup]) -> list[str]:
    """Why a row's numbers may overstate robustness, from what each matchup recorded (empty when nothing is wrong)."""
    flags = [f"{m.attack}: {m.status}, left out of the worst case" for m in group if m.status.failed]
    ok = [m for m in group if m.status == Status.OK]
    white = [m for m in ok if m.white_box]
    other = [m for m in ok if not m.white_box]
    for m in other:
        kind = "transfer" if m.gradient.get("source") else "external" if m.gradient.get("external") else \
            "gradient-free"
        beyond = checks.beyond_white_box(m, white)
        if beyond:
            bpda = sorted({stage for w in white for stage in w.gradient.get("bpda", [])})
            advice = (f"the BPDA approximation of {', '.join(bpda)} is weak here: give the stage a closer "
                      "differentiable approximation (estimate_gradient), or attack with more iterations and restarts"
                      if bpda else "gradients may be masked: attack adaptively (BPDA, EOT) or with more iterations")
            flags.append(f"{m.attack} ({kind}) broke {beyond} samples that every white-box attack missed; {advice}")
            continue
        # Else compare with the white-box run of the same attack plugin when there is one, else with the strongest.
        same = [w for w in white if _same_samples(w, m)]
        compared = [w for w in same if _plugin(w) == _plugin(m)] or ([min(same, key=_robust)] if same else [])
        beaten = [w for w in compared if m.robust_accuracy < w.robust_accuracy - TOLERANCE]
        if beaten:
            w = max(beaten, key=_robust)
            flags.append(f"{m.attack} ({kind}) beats white-box {w.attack}: "
                         f"{m.robust_accuracy:.1%} < {w.robust_accuracy:.1%}; gradients may be masked")
    if white and other:
        best = max(other, key=_robust)
        white_worst = float(worst_case(white).mean())
        if best.gradient.get("source") and best.robust_accuracy - white_worst > TRANSFER_GAP:
            flags.append(f"robust only to transfer: {best.robust_accuracy:.1%} under {best.attack} but "
                         f"{white_worst:.1%} white-box, so it ranks by the white-box number")
    for m in ok:
        if m.gradient.get("randomized") and m.gradient.get("eot_samples", 1) <= 1 and not m.gradient.get("source"):
            flags.append(f"{m.attack}: randomized defense ({', '.join(m.gradient['randomized'])}) attacked without EOT")
        if m.gradient.get("masked"):
            flags.append(f"{m.attack}: non-differentiable {', '.join(m.gradient['masked'])} attacked without BPDA")
    return flags + checks.flags(group)


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
        failed = [m.status for m in ms if m.status.failed]
        result[suite] = failed[0] if failed else float(worst_case(ms).mean())
    return result


def _passes(group: list[Matchup]) -> float | None:
    """Passes per sample over all of the row's attacks; None when any was not counted (or none was played)."""
    counted = [m.passes_per_sample for m in group]
    return None if not counted or None in counted else sum(counted)


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
            attacks={**{m.attack: m.robust_accuracy if m.status == Status.OK else m.status for m in group},
                     **_suites(group), **dict.fromkeys(absent, "missing")},
            worst_case=float(combined.mean()) if combined is not None else None,
            flags=flags, evaluation=_evaluation(group) + _actively_tested(group),
            suite=", ".join(sorted({m.suite for m in group if m.suite})),
            passes=_passes(group),
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


#: An L∞ ε at which every image can be moved to the same grey one: an attack that works leaves almost nothing robust.
SATURATING_LINF = 0.5
#: Budgets this small should leave accuracy at its clean value; robust accuracy this far below clean means the
#: predictions are unstable (randomness) or the evaluation is broken.
TINY_EPS = {"linf": 1e-4, "l2": 1e-3}
SANITY_GAP = 0.01


def sweep_flags(
    curves: dict[tuple[str, str], list[tuple[float, float]]], clean: dict[tuple[str, str], float | None] | None = None,
    norm: str | None = None,
) -> dict[tuple[str, str], list[str]]:
    """Rows whose robustness curve is implausible: worst-case accuracy that does not fall as ε grows (the attack, not
    the model, is failing), that stays above chance at an L∞ ε of 0.5 or more, or that is well below clean accuracy
    at a vanishing ε."""
    flagged: dict[tuple[str, str], list[str]] = {}
    for key, points in curves.items():
        points = sorted(points)
        found = []
        # nothing left to fall (already ~0 at the smallest ε) is not a finding
        if len(points) >= 2 and points[0][1] > TOLERANCE and points[-1][1] >= points[0][1] - TOLERANCE:
            found.append(f"robust accuracy does not fall as ε grows ({points[0][1]:.1%} at ε={points[0][0]:.4g}, "
                         f"{points[-1][1]:.1%} at ε={points[-1][0]:.4g})")
        large = [(e, a) for e, a in points if norm == "linf" and e >= SATURATING_LINF and a > 0.1]
        if large:
            found.append(f"{large[-1][1]:.1%} robust at ε={large[-1][0]:.4g}, where every image can be turned grey; "
                         "the attack is failing")
        base = (clean or {}).get(key)
        tiny = [(e, a) for e, a in points if norm in TINY_EPS and e <= TINY_EPS[norm]]
        if base is not None and tiny and tiny[0][1] < base - SANITY_GAP:
            found.append(f"{tiny[0][1]:.1%} robust at ε={tiny[0][0]:.2g} against {base:.1%} clean; at a vanishing ε "
                         "it should equal clean accuracy (unstable predictions?)")
        if found:
            flagged[key] = found
    return flagged


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


def board(store: Store, run: Run, matchups: list[Matchup] | None = None) -> list[Row]:
    """A run's rows with every trust flag, the ε-sweep one included (from ``matchups`` when already loaded)."""
    table = rows(store.matchups(run.id) if matchups is None else matchups, run)
    clean = {(row.model, row.defense): row.clean_accuracy for row in table}
    flagged = sweep_flags(curves(store, run), clean, run.threat.norm)
    for row in table:
        row.flags += flagged.get((row.model, row.defense), [])
    return table


@dataclass
class Table:
    """Columns and records ready to render: numbers stay fractions until a format shows them."""

    title: str
    columns: list[str]
    records: list[dict[str, Any]]
    percent: set[str] = field(default_factory=set)


def leaderboard_table(run: Run, table: list[Row]) -> Table:
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
               "samples",
               "threat", "run", "arena", "flags"]
    return Table(title, columns, records, {"clean", "worst case", *attacks})


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
            numeric = not isinstance(x, str) and not isinstance(y, str) and x is not None and y is not None
            record.update({f"{name} A": x, f"{name} B": y, f"{name} Δ": y - x if numeric else None})
            percent |= {f"{name} A", f"{name} B", f"{name} Δ"}
        records.append(record)
    columns = list(dict.fromkeys(k for r in records for k in r))
    sides = (("A", run_a), ("B", run_b))
    title = " · ".join(f"{side} = run {run.id} ({run.scenario}, {run.threat})" for side, run in sides)
    return Table(title, columns, records, percent)


def _cell(value: Any, percent: bool) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "; ".join(value)
    if isinstance(value, str):
        return value.upper() if value in (Status.INVALID, Status.ERROR) else value
    return f"{100 * value:.1f}%" if percent else str(value)


def render(table: Table, fmt: str = "table", images: list[str] = ()) -> str:
    """``table`` in one of ``FORMATS``; ``images`` (file names beside the HTML page) are shown under it."""
    shown = [[_cell(r.get(c), c in table.percent) for c in table.columns] for r in table.records]
    if fmt == "json":
        return json.dumps({"title": table.title, "rows": table.records}, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, table.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: _cell(r[c], False) if isinstance(r.get(c), list) else "" if r.get(c) is None else r[c]
                          for c in table.columns} for r in table.records)
        return out.getvalue()
    if fmt == "md":
        lines = [f"**{table.title}**", "", "| " + " | ".join(table.columns) + " |",
                 "|" + "---|" * len(table.columns), *("| " + " | ".join(c.replace("|", "/") for c in line) + " |"
                                                      for line in shown)]
        return "\n".join(lines)
    if fmt == "html":
        return _html(table, shown, images)
    widths = [max(len(line[i]) for line in [table.columns, *shown]) for i in range(len(table.columns))]
    fixed = [i for i, c in enumerate(table.columns) if c != "flags"]
    lines = [table.title, "  ".join(table.columns[i].ljust(widths[i]) for i in fixed)]
    lines += ["  ".join(line[i].ljust(widths[i]) for i in fixed).rstrip() for line in shown]
    if "flags" in table.columns:
        lines += [f"⚑ {r['model']}+{r['defense']}: {flag}" for r in table.records for flag in r["flags"]]
    return "\n".join(lines)


_CSS = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}h1{font-size:1.2em}
table{border-collapse:collapse}th,td{padding:.3em .7em;border-bottom:1px solid #ddd;text-align:right}
th{background:#f4f4f4}td.text{text-align:left}tr.flagged td{background:#fff6e0}.flags{color:#a35b00;text-align:left}
img{max-width:100%;margin:1em 0;display:block}"""


def _css_class(column: str, table: Table) -> str:
    return "flags" if column == "flags" else "num" if column in table.percent else "text"


def _html(table: Table, shown: list[list[str]], images: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for record, line in zip(table.records, shown):
        cells = "".join(
            f"<td class=\"{_css_class(c, table)}\">{html.escape(v)}</td>" for c, v in zip(table.columns, line)
        )
        flagged = " class=\"flagged\"" if record.get("flags") else ""
        body.append(f"<tr{flagged}>{cells}</tr>")
    pictures = "".join(f'<img src="{html.escape(name)}" alt="{html.escape(name)}">' for name in images)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>arena leaderboard</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(table.title)}</h1>"
            f"<table id=\"leaderboard\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"{pictures}</body></html>\n")


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
