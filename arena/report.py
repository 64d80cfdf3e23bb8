"""Pictures of a run, written next to its results: leaderboard bars, robustness curves, adversarial examples, and
one self-contained HTML page that shows them under the leaderboard table.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from arena.leaderboard import Row, curves, leaderboard_table, render  # noqa: E402
from arena.matchups import Arena, Data  # noqa: E402
from arena.records import Run  # noqa: E402
from arena.registry import Registry  # noqa: E402
from arena.scenario import parse_scenario  # noqa: E402
from arena.store import Store  # noqa: E402
from arena.training import WeightsCache  # noqa: E402

log = logging.getLogger(__name__)


def bar_chart(table: list[Row], path: Path) -> Path:
    """Clean and worst-case robust accuracy of every row, best first."""
    labels = [f"{r.model}\n{r.defense}" for r in table]
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(table)), 4))
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
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, series in sorted(points.items()):
        series = sorted(([(0.0, clean[key])] if clean.get(key) is not None else []) + series)
        ax.plot([e for e, _ in series], [100 * a for _, a in series], marker="o", label="+".join(key))
    ax.set_xlabel(f"ε ({norm})")
    ax.set_ylabel("worst-case robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    return _save(fig, path)


def examples_grid(
    store: Store, run: Run, table: list[Row], registry: Registry, cache: WeightsCache, path: Path,
    count: int = 6,
) -> Path | None:
    """Clean image, adversarial image, amplified perturbation, with label and confidence before and after, for the
    first samples broken by the strongest white-box attack on the first row; None when its weights are not cached
    (a report never trains)."""
    scenario = parse_scenario(run.scenario_text, run.scenario_path, registry)
    arena = Arena(scenario, registry, store.results_dir, cache=cache, progress=False,
                  threat=run.threat)
    data = Data.load(scenario, registry)
    matchups = {(m.model, m.defense, m.attack): m for m in store.matchups(run.id)}
    for row in table:
        model_ref = next(r for r in scenario.models if r.key == row.model)
        defense_ref = next(r for r in scenario.defenses if r.key == row.defense)
        played = {a.key: matchups.get((row.model, row.defense, a.key)) for a in scenario.attacks}
        white = [a for a in scenario.attacks if a.source is None and played[a.key] and played[a.key].status == "ok"]
        if not white or not arena.trained(data, model_ref, defense_ref):
            continue
        attack_ref = min(white, key=lambda a: matchups[row.model, row.defense, a.key].robust_accuracy)
        m = matchups[row.model, row.defense, attack_ref.key]
        broken = np.flatnonzero(m.attacked_mask & ~m.robust_correct)[:count]
        if not len(broken):
            continue
        target = arena.defended(data, model_ref, defense_ref)
        attack, crafted_on, _ = arena.attacker(data, model_ref, defense_ref, attack_ref)
        index = torch.from_numpy(broken)
        images, labels = data.images[index], data.labels[index]
        crafted_on.eval()
        adversarial = attack(images, labels).detach()
        with torch.no_grad():
            before, after = target(images).softmax(1), target(adversarial).softmax(1)
        names = getattr(data.dataset, "classes", None)
        return _grid(images, adversarial, before, after, names, f"{attack_ref.key} vs {row.model}+{row.defense}",
                     run.threat.eps, path)
    return None


def _grid(images: torch.Tensor, adversarial: torch.Tensor, before: torch.Tensor, after: torch.Tensor,
          names: tuple[str, ...] | None, title: str, eps: float, path: Path) -> Path:
    def label(p: torch.Tensor) -> str:
        top = int(p.argmax())
        return f"{names[top] if names else top} {float(p[top]):.0%}"

    fig, axes = plt.subplots(len(images), 3, figsize=(6, 2 * len(images)), squeeze=False)
    for i in range(len(images)):
        delta = (adversarial[i] - images[i]) / (2 * eps) + 0.5  # amplified so ±ε spans the full range
        for ax, picture, caption in zip(axes[i], (images[i], adversarial[i], delta.clamp(0, 1)),
                                        (f"clean: {label(before[i])}", f"adversarial: {label(after[i])}",
                                         "perturbation (amplified)")):
            ax.imshow(picture.permute(1, 2, 0).numpy())
            ax.set_title(caption, fontsize=8)
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    store: Store, run: Run, table: list[Row], registry: Registry, cache: WeightsCache | None = None,
    out: Path | None = None,
) -> Path:
    """Write the pictures and ``leaderboard.html`` of a run (its ``board`` rows in ``table``) into ``out``
    (default ``<results>/reports/<run id>``)."""
    folder = Path(out or store.results_dir / "reports" / run.id)
    pictures = [bar_chart(table, folder / "leaderboard.png"),
                curve_chart(curves(store, run), table, run.threat.norm, folder / "robustness.png")]
    grid = examples_grid(store, run, table, registry, cache or WeightsCache(), folder / "examples.png")
    if grid is None:
        log.warning("no adversarial-example grid: no row has cached weights and a broken sample")
    page = render(leaderboard_table(run, table), "html", [p.name for p in pictures + [grid] if p is not None])
    (folder / "leaderboard.html").write_text(page, encoding="utf-8")
    return folder / "leaderboard.html"
