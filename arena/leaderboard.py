"""Turn stored matchups into a leaderboard: per model × defense, clean and robust accuracy and the per-sample worst case."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arena.store import Matchup, Store


@dataclass
class Row:
    """One model × defense: clean accuracy, robust accuracy per attack, and the worst case over valid attacks."""

    model: str
    defense: str
    samples: int
    clean_accuracy: float | None
    attacks: dict[str, float | str] = field(default_factory=dict)
    worst_case: float | None = None
    excluded: list[str] = field(default_factory=list)


def worst_case(matchups: list[Matchup]) -> np.ndarray | None:
    """Per-sample robustness over every valid attack: a sample counts only if every attack failed on it."""
    masks = [m.robust_correct for m in matchups if m.status == "ok"]
    return np.logical_and.reduce(masks) if masks else None


def rows(matchups: list[Matchup]) -> list[Row]:
    """Group matchups by model × defense and rank by worst-case robust accuracy (unrankable rows last)."""
    groups: dict[tuple[str, str], list[Matchup]] = {}
    for m in matchups:
        groups.setdefault((m.model, m.defense), []).append(m)
    table = []
    for (model, defense), group in groups.items():
        clean = next((m.clean_accuracy for m in group if m.clean_accuracy is not None), None)
        row = Row(model, defense, group[0].samples, clean)
        for m in group:
            row.attacks[m.attack] = m.robust_accuracy if m.status == "ok" else m.status
            if m.status != "ok":
                row.excluded.append(m.attack)
        combined = worst_case(group)
        row.worst_case = float(combined.mean()) if combined is not None else None
        table.append(row)
    return sorted(table, key=lambda r: (r.worst_case is None, -(r.worst_case or 0.0)))


def _percent(value: float | str | None) -> str:
    if value is None:
        return "-"
    return value.upper() if isinstance(value, str) else f"{100 * value:.1f}%"


def render(run: dict[str, Any], table: list[Row]) -> str:
    """A plain-text table headed by the run that produced it."""
    attacks = list(dict.fromkeys(a for r in table for a in r.attacks))
    header = ["rank", "model", "defense", "clean", *attacks, "worst case"]
    body = [
        [str(i + 1) if r.worst_case is not None else "-", r.model, r.defense, _percent(r.clean_accuracy),
         *(_percent(r.attacks.get(a)) for a in attacks), _percent(r.worst_case)]
        for i, r in enumerate(table)
    ]
    widths = [max(len(line[c]) for line in [header, *body]) for c in range(len(header))]
    lines = [
        f"run {run['id']} · scenario {run['scenario']} · {run['norm']} ε={run['eps']:.4g} · "
        f"{run['samples']} samples · arena {run['arena_version']} · {run['status']}",
        "  ".join(h.ljust(w) for h, w in zip(header, widths)),
        *("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in body),
    ]
    notes = [f"{r.model}+{r.defense}: worst case excludes {', '.join(r.excluded)} (not valid)" for r in table if r.excluded]
    return "\n".join(lines + notes)


def write_summary(store: Store, run_id: str) -> Path:
    """Write ``runs/<run id>.json`` beside the store: the run, every matchup's numbers, and the leaderboard."""
    run = store.run(run_id)
    matchups = store.matchups(run_id)
    path = store.results_dir / "runs" / f"{run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "run": {k: v for k, v in run.items() if k != "scenario_text"},
        "matchups": [m.summary() for m in matchups],
        "leaderboard": [asdict(r) for r in rows(matchups)],
    }
    path.write_text(json.dumps(summary, indent=2))
    return path
