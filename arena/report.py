"""Pictures of a run, written next to its results: leaderboard bars, robustness curves, adversarial examples, and
one self-contained HTML page that shows them under the leaderboard table.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from arena.formats import render
from arena.leaderboard import Row, curves, leaderboard_table
from arena.records import Example, Run, Status
from arena.scenario import DEFAULT_EXAMPLES
from arena.store import Store
from arena.untrusted import child

log = logging.getLogger(__name__)


def _pyplot() -> ModuleType:
    """matplotlib's pyplot, on the file-only backend; imported at the first picture, not with ``arena``: it takes
    half a second, which every command would pay (startup time)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def bar_chart(table: list[Row], path: Path) -> Path:
    """Clean and worst-case robust accuracy of every row, best first."""
    labels = [f"{r.model}\n{r.defense}" for r in table]
    x = np.arange(len(table))
    fig, ax = _pyplot().subplots(figsize=(max(6, 0.9 * len(table)), 4))
    ax.bar(x - 0.2, [100 * (r.clean_accuracy or 0) for r in table], 0.4, label="clean", color="#9bb7d4")
    ax.bar(x + 0.2, [100 * (r.worst_case or 0) for r in table], 0.4, label="worst case", color="#c0392b")
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    return _save(fig, path)


def curve_chart(
    points: dict[tuple[str, str], list[tuple[float, float]]], table: list[Row], norm: str, path: Path
) -> Path:
    """Worst-case accuracy against ε per model × defense, starting from the clean accuracy at ε = 0."""
    clean = {(r.model, r.defense): r.clean_accuracy for r in table}
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    for key, series in sorted(points.items()):
        start = clean.get(key)
        series = sorted(([(0.0, start)] if start is not None else []) + series)
        ax.plot([e for e, _ in series], [100 * a for _, a in series], marker="o", label="+".join(key))
    ax.set_xlabel(f"ε ({norm})")
    ax.set_ylabel("worst-case robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    return _save(fig, path)


def examples_grid(store: Store, run: Run, table: list[Row], path: Path) -> Path | None:
    """Clean image, adversarial image, amplified perturbation, with label and confidence before and after, as the
    run counted them: the examples the store kept for the strongest white-box attack of the first row that has
    any. None when no row has one. Nothing is rebuilt: no plugin, data, weights or attack is needed."""
    matchups = store.matchups(run.id)
    for row in table:
        white = [m for m in matchups if m.model == row.model and m.defense == row.defense and m.status == Status.OK
                 and not m.gradient.get("source")]
        for m in sorted(white, key=lambda m: m.robust_accuracy or 0.0):  # finished: every one has a number
            examples = store.examples(m)
            if examples:
                return gallery(examples[:DEFAULT_EXAMPLES], run.classes, f"{m.attack} vs {row.model}+{row.defense}",
                               path)
    return None


def gallery(examples: list[Example], classes: list[str], title: str, path: Path) -> Path:
    """One row per example, as the seed study's figure: clean image with its prediction, confidence and true label;
    adversarial image with its prediction and confidence; the perturbation amplified to the full range."""
    def label(index: int, confidence: float | None = None) -> str:
        name = classes[index] if index < len(classes) else str(index)
        return name if confidence is None else f"{name} {confidence:.0%}"

    fig, axes = _pyplot().subplots(len(examples), 3, figsize=(6, 2 * len(examples) + 0.3), squeeze=False,
                             layout="constrained")  # room for the title above the first row, at any height
    for ax_row, e in zip(axes, examples):
        delta = e.adversarial - e.clean
        delta = delta / (2 * max(float(np.abs(delta).max()), 1e-12)) + 0.5  # amplified: its largest change spans all
        captions = (f"clean: {label(e.predicted_before, e.confidence_before)}\ntrue: {label(e.label)}",
                    f"adversarial:\n{label(e.predicted_after, e.confidence_after)}", "perturbation\n(amplified)")
        for ax, picture, caption in zip(ax_row, (e.clean, e.adversarial, np.clip(delta, 0, 1)), captions):
            if picture.shape[0] == 1:  # a grey image: H×W on a fixed grey scale
                ax.imshow(picture[0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(np.transpose(picture, (1, 2, 0)))
            ax.set_title(caption, fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def write_report(store: Store, run: Run, table: list[Row], out: Path | None = None) -> Path:
    """Write the pictures and ``leaderboard.html`` of a run (its ``board`` rows in ``table``) into ``out``
    (default ``<results>/reports/<run id>``)."""
    folder = Path(out) if out else child(store.results_dir, "reports", run.id)
    pictures = [bar_chart(table, child(folder, "leaderboard.png")),
                curve_chart(curves(store, run), table, run.threat.norm, child(folder, "robustness.png"))]
    grid = examples_grid(store, run, table, child(folder, "examples.png"))
    if grid is None:
        log.warning("no adversarial-example grid: the store keeps no successful example of this run")
    page = render(leaderboard_table(run, table), "html", [p.name for p in pictures + [grid] if p is not None])
    child(folder, "leaderboard.html").write_text(page, encoding="utf-8")
    return folder / "leaderboard.html"
