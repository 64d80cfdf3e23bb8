"""The Python entry, for notebooks and scripts: ``open_scenario`` reads and validates a scenario file with its
plugins, and ``evaluate`` plays attacks against any ``nn.Module``, as RobustBench's ``benchmark(model, ...)`` does.

``evaluate`` goes through the same engine as ``arena run`` (the module becomes a pretrained model plugin, the images a
dataset plugin), so every adversarial batch is audited, attacks are seeded, passes counted and checks run, and the
results can be written to a results store where the leaderboard shows them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch
import yaml
from torch import nn

from arena.errors import ArenaError
from arena.flags import worst_case
from arena.kinds import Dataset, Model
from arena.leaderboard import rows
from arena.matchups import Arena
from arena.records import Matchup, Run
from arena.registry import PluginError, Registry, load_registry
from arena.runtime import Runtime
from arena.scenario import Scenario, check_declared, declared_plugins, load_scenario, parse_scenario, resolve_model
from arena.threat import ThreatModel
from arena.training import WeightsCache, fingerprint
from arena.untrusted import check_split

_hookimpl = pluggy.HookimplMarker("arena")


def open_scenario(
    path: str | Path, plugins: Iterable[str] = (), block: Iterable[str] = (), allow_plugins_outside: bool = False
) -> tuple[Scenario, Registry]:
    """Read and validate the scenario at ``path``: the plugins it declares (``.py`` files inside its folder unless
    ``allow_plugins_outside``, or installed modules) and ``plugins`` (import paths or ``.py`` files) are loaded first,
    ``block`` names entry points not to load. Raises an ``ArenaError`` naming the problem."""
    declared = declared_plugins(path)
    check_declared(path, declared, allow_plugins_outside)
    try:
        registry = load_registry(modules=[*plugins, *declared], blocked=block)
    except PluginError as exc:
        raise PluginError(f"{path}: plugins: {exc}" if declared else str(exc)) from None
    return load_scenario(path, registry), registry


def load_model(entry: str | dict[str, Any], num_classes: int = 10, plugins: Iterable[str] = ()) -> nn.Module:
    """The module a scenario's model entry builds, in eval mode, for ``evaluate``: ``{"name": "robustbench", "model":
    "Carmon2019Unlabeled"}`` or ``{"name": "timm", "arch": "resnet18", "checkpoint": "w.pt"}``. Validated as a scenario
    is (relative paths from the working folder); raises an ``ArenaError`` naming each problem. ``num_classes`` sizes an
    architecture's last layer where no checkpoint fixes it."""
    registry = load_registry(modules=plugins)
    ref = resolve_model(entry, registry, "load_model()")
    return registry.build(Model, ref).build(num_classes).eval()


@dataclass
class Evaluation:
    """What ``evaluate`` found: accuracies over all samples, per-sample arrays, trust flags and the stored records."""

    clean_accuracy: float
    #: Robust accuracy per attack entry (``None`` when the matchup crashed or failed its audit).
    robust_accuracy: dict[str, float | None]
    #: Per sample, over every valid attack: right clean and under every attack. Never clean accuracy alone:
    #: ``evaluate`` raises when no attack finished, and ``flags`` name any attack left out.
    worst_case: float
    clean_correct: np.ndarray
    robust_correct: dict[str, np.ndarray | None]
    worst_case_correct: np.ndarray
    flags: list[str]
    run: Run
    matchups: list[Matchup]


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    attacks: Sequence[str | dict[str, Any]],
    threat: ThreatModel,
    defenses: Sequence[str | dict[str, Any]] | None = None,
    results: str | Path | None = None,
    *,
    name: str = "model",
    batch_size: int = 500,
    seed: int = 0,
    evaluation: str = "full",
    device: str | torch.device = "cpu",
    plugins: Iterable[str] = (),
    runtime: Runtime | None = None,
) -> Evaluation:
    """Attack ``model`` (an ``nn.Module`` from [0, 1] images, ``[N, C, H, W]``, to logits; moved to ``device``
    and set to eval mode) on ``images`` and ``labels`` with scenario-style ``attacks`` entries (``"fgsm"``,
    ``{"name": "pgd", "steps": 20}``, ``"autoattack"``) inside ``threat``. ``defenses``: inference-time stages
    (``["art.jpeg"]``) composed around the model in order. ``results``: a results folder to store the run in, so
    ``arena leaderboard`` shows it; by default nothing is kept. ``runtime``: opt-in speed settings
    (``arena.Runtime(precision="bf16", compile=True)``). Raises an ``ArenaError`` naming the attacks when none
    finished (each crashed or failed its audit), so no number is returned that no attack measured."""
    images, labels = images.detach().float().cpu().contiguous(), labels.detach().cpu()
    if images.dim() != 4 or len(images) != len(labels) or not len(images):
        raise ArenaError(f"evaluate: images must be [N, C, H, W] with one label each; got {tuple(images.shape)} "
                         f"images and {tuple(labels.shape)} labels")
    device = torch.device(device)
    with torch.no_grad():
        logits = model.to(device).eval()(images[:1].to(device))
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ArenaError(f"evaluate: the model returns {shape} for one image; it must return one tensor of logits, "
                         "[N, classes]")
    classes = logits.shape[1]
    check_split(images, labels, classes, "evaluate")  # float labels, labels beyond the logits, 0-255 images
    labels = labels.long()
    registry = load_registry(modules=[*plugins, _Given(model, images, labels, classes)])
    chain = list(defenses or ["none"])
    entry = {
        "name": f"evaluate {name}", "seed": seed, "batch_size": batch_size, "evaluation": evaluation,
        "dataset": {"name": _Given.dataset_name}, "threat_model": {"norm": threat.norm, "eps": threat.eps},
        "models": [{"name": _Given.model_name, "label": name}],
        "defenses": [chain[0] if len(chain) == 1 else {"chain": chain}], "attacks": list(attacks),
    }
    scenario = parse_scenario(yaml.safe_dump(entry, sort_keys=False), "evaluate()", registry)
    with tempfile.TemporaryDirectory(prefix="arena-evaluate-") as scratch:
        folder = Path(results) if results is not None else Path(scratch)
        arena = Arena(scenario, registry, folder, device, WeightsCache(Path(scratch) / "weights"),
                      progress=False, runtime=runtime or Runtime())
        run_id = arena.play()
        with arena.store as store:
            run, matchups = store.run(run_id), store.matchups(run_id)
    [row] = rows(matchups, run)
    worst = worst_case(matchups)
    if worst is None:
        raise ArenaError(_none_finished(matchups, results))
    return Evaluation(
        clean_accuracy=row.clean_accuracy, worst_case=float(worst.mean()),
        robust_accuracy={m.attack: m.robust_accuracy for m in matchups},
        clean_correct=matchups[0].clean_correct, robust_correct={m.attack: m.robust_correct for m in matchups},
        worst_case_correct=worst, flags=row.flags, run=run, matchups=matchups,
    )


def _none_finished(matchups: list[Matchup], results: str | Path | None) -> str:
    """The message when no attack finished: each one's status and last line, and where the records are."""
    failed = "; ".join(f"{m.attack} ({m.status}: {((m.detail or '').strip().splitlines() or ['?'])[-1]})"
                       for m in matchups)
    kept = f"their records are in {Path(results) / 'arena.db'}" if results is not None else \
        "pass results=FOLDER to keep their records"
    return f"evaluate: no attack finished, so there is no robust accuracy to report: {failed}; {kept}"


class _Given:
    """Registers the caller's module as a pretrained model plugin and the caller's images as a dataset plugin."""

    model_name = "evaluate.model"
    dataset_name = "evaluate.data"

    def __init__(self, module: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: int) -> None:
        weights = fingerprint(*module.state_dict().values())

        class GivenModel(Model):
            """The module handed to ``arena.evaluate``."""

            name = self.model_name
            pretrained = True

            def build(self, num_classes: int) -> nn.Module:
                return module

            def identity(self) -> str:
                return weights

        class GivenData(Dataset):
            """The images handed to ``arena.evaluate`` (the same for every split)."""

            name = self.dataset_name
            num_classes = classes

            def load(self, split: str, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
                return images, labels

        self.model, self.data = GivenModel, GivenData

    @_hookimpl
    def arena_register_models(self, register) -> None:
        register(self.model)

    @_hookimpl
    def arena_register_datasets(self, register) -> None:
        register(self.data)
