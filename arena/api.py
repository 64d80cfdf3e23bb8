"""The Python entry, for notebooks and scripts: ``open_scenario`` reads and validates a scenario file with its
plugins, and ``evaluate`` plays attacks against any ``nn.Module``, as RobustBench's ``benchmark(model, ...)`` does.

``evaluate`` goes through the same engine as ``arena run`` (the module becomes a pretrained model plugin, the images a
dataset plugin), so every adversarial batch is audited, attacks are seeded, passes counted and checks run, and the
results can be written to a results store where the leaderboard shows them.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch
from torch import nn

from arena.errors import ArenaError
from arena.flags import worst_case
from arena.kinds import Dataset, Model
from arena.leaderboard import rows
from arena.records import Matchup, Run, Status
from arena.registry import PluginError, Registry, load_registry
from arena.running import Played, resolve_device, run_scenario
from arena.runtime import Runtime
from arena.scenario import check_declared, declared_plugins, load_scenario
from arena.schema import Scenario, ScenarioError, fraction
from arena.store import Store
from arena.threat import Norm, ThreatModel
from arena.training import WeightsCache, fingerprint
from arena.validation import resolve_model, validate_scenario

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


#: Scenario fields as ``evaluate`` names them, for its error messages (longest first).
_ARGUMENTS = {
    "models[0].label": "name", "models[0]": "model", "dataset.samples": "n_examples", "dataset.data_dir": "data_dir",
    "dataset.name": "dataset", "dataset": "dataset", "threat_model.eps": "threat", "threat_model": "threat",
    "defenses[0].chain": "defenses", "defenses[0].name": "defenses[0]",
}
#: The norms ``evaluate`` accepts, as the arena, RobustBench and AutoAttack spell them.
_NORMS: dict[str, Norm] = {"linf": "linf", "l2": "l2"}


@dataclass
class Evaluation:
    """What ``evaluate`` found: accuracies over all samples, per-sample arrays, the worst-case adversarial images,
    the attacks skipped or failed, trust flags and the stored records."""

    clean_accuracy: float
    #: Robust accuracy of each attack that finished (skipped and failed attacks are in ``skipped`` and ``failed``).
    robust_accuracy: dict[str, float]
    #: Per sample, over every finished attack: right clean and under every attack. Never clean accuracy alone:
    #: ``evaluate`` raises when no attack finished, and ``flags`` name any attack left out.
    worst_case: float
    clean_correct: np.ndarray
    robust_correct: dict[str, np.ndarray]
    worst_case_correct: np.ndarray
    #: Per sample, the first adversarial image that fooled the model, else the clean image; in the type and layout
    #: of ``images`` (NCHW tensors for ``dataset=``), float32 in [0, 1].
    adversarial: torch.Tensor | np.ndarray
    #: Attacks that did not run, with the reason (a suite member whose condition did not hold).
    skipped: dict[str, str]
    #: Attacks that crashed or failed their audit: status and last line of the error.
    failed: dict[str, str]
    flags: list[str]
    run: Run
    matchups: list[Matchup]


def evaluate(
    model: nn.Module,
    images: torch.Tensor | np.ndarray | None = None,
    labels: torch.Tensor | np.ndarray | Sequence[int] | None = None,
    attacks: str | dict[str, Any] | Sequence[str | dict[str, Any]] = "fast",
    threat: ThreatModel | tuple[str, float | str] | None = None,
    *,
    defenses: str | dict[str, Any] | Sequence[str | dict[str, Any]] | None = None,
    results: str | Path | None = None,
    dataset: str | None = None,
    n_examples: int | None = None,
    data_dir: str | Path | None = None,
    name: str = "model",
    batch_size: int = 500,
    seed: int = 0,
    evaluation: str = "full",
    device: str | torch.device = "auto",
    plugins: Iterable[str] = (),
    runtime: Runtime | None = None,
) -> Evaluation:
    """Attack ``model`` (an ``nn.Module`` from [0, 1] images ``[N, C, H, W]`` to logits) with ``attacks`` (an attack
    or suite name such as ``"fast"``, a dict such as ``{"name": "pgd", "steps": 20}``, or a list) inside ``threat``
    (an ``arena.ThreatModel`` or ``("Linf", 8/255)``), on ``images`` and ``labels`` (tensors or NumPy arrays, NCHW or
    NHWC, float in [0, 1] or uint8) or the first ``n_examples`` test images of ``dataset``. ``defenses``: inference
    stages composed around the model in order; ``results``: a folder to store the run in for ``arena leaderboard``.
    Every bad argument raises an ``ArenaError`` naming it; so does a run in which no attack finished."""
    threat = _threat(threat)
    attack_entries, defense_entries = _entries("attacks", attacks), _entries("defenses", defenses or "none")
    device = resolve_device(device, "device")
    if not isinstance(model, nn.Module):
        raise ArenaError(f"model: got {type(model).__name__}; give a torch.nn.Module that maps [0, 1] images to logits")
    if runtime is not None and not isinstance(runtime, Runtime):
        raise ArenaError(f"runtime: got {type(runtime).__name__}; give arena.Runtime(...) or leave it unset")
    if n_examples is not None and (not isinstance(n_examples, int) or isinstance(n_examples, bool) or n_examples < 1):
        raise ArenaError(f"n_examples: got {n_examples!r}; give a whole number ≥ 1, or leave it unset for all")
    if results is not None and Path(results).is_file():
        raise ArenaError(f"results: {results} is a file; give a folder (created if missing) or leave it unset")
    given = images is not None or labels is not None
    if given and dataset is not None:
        raise ArenaError("dataset: give either images and labels, or dataset= to load a test set, not both")
    if not given and dataset is None:
        raise ArenaError("images: missing; give images and labels, or dataset='cifar10' (and n_examples) to load "
                         "its test set")
    if given:
        x, layout = _images(images)
        y = _labels(labels, len(x))
        x, y = x[:n_examples], y[:n_examples]
        classes = _width(model, x, device)
        registry = load_registry(modules=[*plugins, _Given(model, x, y, classes)])
        data: dict[str, Any] = {"name": _Given.dataset_name}
    else:
        registry = load_registry(modules=[*plugins, _Given(model)])
        layout, data = "torch NCHW", {"name": dataset, **({"samples": n_examples} if n_examples else {}),
                                      **({"data_dir": str(data_dir)} if data_dir is not None else {})}
    entry = {
        "name": f"evaluate {name}", "seed": seed, "batch_size": batch_size, "evaluation": evaluation, "dataset": data,
        "threat_model": {"norm": threat.norm, "eps": threat.eps},
        "models": [{"name": _Given.model_name, "label": name}],
        "defenses": [defense_entries[0] if len(defense_entries) == 1 else {"chain": defense_entries}],
        "attacks": attack_entries, "save_examples": "all",
    }
    scenario = _scenario(entry, registry)
    if not given:
        x, y = registry.build(Dataset, scenario.dataset).load(scenario.dataset.split, scenario.data_dir())
        x, y = x[:n_examples], y[:n_examples]
        classes = _width(model, x, device)
    if int(y.min()) < 0 or int(y.max()) >= classes:
        raise ArenaError(f"labels: values span {int(y.min())}..{int(y.max())}, but the model outputs {classes} logits; "
                         f"give class indices in 0..{classes - 1}")
    with tempfile.TemporaryDirectory(prefix="arena-evaluate-") as scratch:
        folder = Path(results) if results is not None else Path(scratch)
        [played] = run_scenario(scenario, registry, folder, device=device,
                                cache=WeightsCache(Path(scratch) / "weights"), progress=False, runtime=runtime)
        adversarial = _worst_adversarial(folder, played.matchups, x)
    return _evaluation(played, adversarial, layout, results)


def _evaluation(played: Played, adversarial: torch.Tensor, layout: str, results: str | Path | None) -> Evaluation:
    """The evaluation of a finished run; raises when no attack finished."""
    matchups, run = played.matchups, played.run
    worst = worst_case(matchups)
    if worst is None:
        raise ArenaError(_none_finished(matchups, results))
    [row] = rows(matchups, run)
    assert row.clean_accuracy is not None, "a run in which an attack finished has a clean accuracy"
    done = [m for m in matchups if m.status == Status.OK]
    if layout.endswith("NHWC"):
        adversarial = adversarial.permute(0, 2, 3, 1).contiguous()
    return Evaluation(
        clean_accuracy=row.clean_accuracy, worst_case=float(worst.mean()),
        robust_accuracy={m.attack: m.robust_accuracy for m in done if m.robust_accuracy is not None},
        clean_correct=done[0].clean, robust_correct={m.attack: m.robust for m in done},
        worst_case_correct=worst, adversarial=adversarial.numpy() if layout.startswith("numpy") else adversarial,
        skipped={m.attack: (m.detail or "").strip() for m in matchups if m.status == Status.SKIPPED},
        failed={m.attack: f"{m.status}: {_last_line(m)}" for m in played.failed},
        flags=row.flags, run=run, matchups=matchups,
    )


def _worst_adversarial(folder: Path, matchups: list[Matchup], clean: torch.Tensor) -> torch.Tensor:
    """Per sample, the first stored adversarial example (in attack order) that fooled the model, else the clean
    image: what an attacker who tries every attack gets."""
    adversarial, taken = clean.clone(), set()
    with Store(folder) as store:
        for m in matchups:
            if m.status != Status.OK:
                continue
            for example in store.examples(m):
                if example.sample not in taken:
                    adversarial[example.sample] = torch.tensor(example.adversarial)
                    taken.add(example.sample)
    return adversarial


def _threat(value: Any) -> ThreatModel:
    """``threat`` as an ``arena.ThreatModel``: from one, or from a ``(norm, eps)`` pair (``"Linf"``, ``"L2"`` in
    any case; ε a number or ``"8/255"``)."""
    usage = "give arena.ThreatModel('linf', 8/255) or a (norm, eps) pair such as ('Linf', 8/255) or ('L2', 0.5)"
    if value is None:
        raise ArenaError(f"threat: missing; {usage}")
    pair = (value.norm, value.eps) if isinstance(value, ThreatModel) else value
    if not isinstance(pair, tuple | list) or len(pair) != 2:
        raise ArenaError(f"threat: got {value!r}; {usage}")
    norm, eps = pair
    if not isinstance(norm, str) or norm.lower() not in _NORMS:
        raise ArenaError(f"threat: unknown norm {norm!r}; use 'Linf' or 'L2' (any case)")
    eps = fraction(eps)
    if not isinstance(eps, int | float) or isinstance(eps, bool) or not math.isfinite(eps) or eps <= 0:
        raise ArenaError(f"threat: ε {pair[1]!r} is not a number > 0; give one such as 8/255 (L∞) or 0.5 (L2)")
    return ThreatModel(_NORMS[norm.lower()], float(eps))


def _entries(argument: str, value: Any) -> list[str | dict[str, Any]]:
    """``attacks`` or ``defenses`` as a list of scenario entries: one name or dict, or a list of them."""
    entries = [value] if isinstance(value, str | dict) else list(value) if isinstance(value, list | tuple) else None
    usage = "a name ('fgsm', 'fast'), a dict ({'name': 'pgd', 'steps': 20}) or a list of them"
    if entries is None:
        raise ArenaError(f"{argument}: got {type(value).__name__}; give {usage}")
    if not entries:
        raise ArenaError(f"{argument}: the list is empty; give {usage}")
    for index, entry in enumerate(entries):
        if not isinstance(entry, str | dict):
            raise ArenaError(f"{argument}[{index}]: got {type(entry).__name__}; give {usage}")
    return entries


def _images(images: Any) -> tuple[torch.Tensor, str]:
    """``images`` as a float32 NCHW tensor in [0, 1] on the CPU, and the layout they came in (``numpy NHWC``...)."""
    kind = "numpy" if isinstance(images, np.ndarray) else "torch" if isinstance(images, torch.Tensor) else None
    if kind is None or (kind == "numpy" and images.dtype.kind not in "biuf"):
        shown = f"a {images.dtype} array" if kind else type(images).__name__
        raise ArenaError(f"images: got {shown}; give a float tensor or NumPy array [N, C, H, W] or [N, H, W, C]")
    x = torch.from_numpy(np.array(images)) if kind == "numpy" else images.detach().cpu()
    if x.dim() != 4 or not len(x):
        raise ArenaError(f"images: shape {tuple(x.shape)}; give a batch [N, C, H, W] or [N, H, W, C] of at least one "
                         "image (one image: images[None])")
    if x.dtype == torch.uint8:
        warnings.warn("evaluate: images are uint8 (0-255); divided by 255 into [0, 1]", stacklevel=3)
        x = x.float() / 255
    elif not x.is_floating_point():
        raise ArenaError(f"images: dtype {x.dtype}; give float values in [0, 1] (or uint8 0-255, divided by 255)")
    x = x.float()
    if x.shape[1] in (1, 3, 4):
        layout = "NCHW"
    elif x.shape[3] in (1, 3, 4):
        x, layout = x.permute(0, 3, 1, 2), "NHWC"
    else:
        raise ArenaError(f"images: shape {tuple(x.shape)} has no channel axis of 1, 3 or 4 first or last; give "
                         "[N, C, H, W] or [N, H, W, C]")
    if not torch.isfinite(x).all():
        raise ArenaError("images: contain NaN or infinite values; give finite values in [0, 1]")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        raise ArenaError(f"images: values span [{low:.4g}, {high:.4g}], outside [0, 1]; divide 0-255 images by 255 "
                         "and undo any normalization (it belongs inside the model)")
    return x.contiguous(), f"{kind} {layout}"


def _labels(labels: Any, count: int) -> torch.Tensor:
    """``labels`` as a long tensor of ``count`` class indices."""
    if labels is None:
        raise ArenaError("labels: missing; give one class index per image with images")
    try:
        y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels.detach().cpu())
    except (TypeError, ValueError, RuntimeError):
        raise ArenaError(f"labels: got {type(labels).__name__}; give a tensor, NumPy array or list of class "
                         "indices") from None
    if y.dim() == 2 and y.shape[1] > 1:
        raise ArenaError(f"labels: shape {tuple(y.shape)} looks one-hot; give class indices (labels.argmax(1))")
    if y.dim() == 2 and y.shape[1] == 1:
        raise ArenaError(f"labels: shape {tuple(y.shape)}; give one class index per image: flatten them "
                         "(labels.reshape(-1))")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise ArenaError(f"labels: dtype {y.dtype}; give integer class indices (float labels are not rounded for you)")
    y = y.reshape(-1).long()
    if len(y) != count:
        raise ArenaError(f"labels: {len(y)} labels for {count} images; give one label per image")
    return y


def _width(model: nn.Module, images: torch.Tensor, device: torch.device) -> int:
    """How many logits ``model`` outputs per image (moved to ``device``, eval mode), tried on one image."""
    try:
        with torch.no_grad():
            out = model.to(device).eval()(images[:1].to(device))
    except Exception as exc:  # the caller's module: any failure is reported, not raised as a traceback
        last = (str(exc).strip().splitlines() or [""])[-1]
        raise ArenaError(f"model: fails on one image of shape {tuple(images.shape[1:])} ({type(exc).__name__}: "
                         f"{last}); it must map [N, C, H, W] images in [0, 1] to logits") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ArenaError(f"model: returns {shape} for one image; it must return logits [N, classes]")
    return out.shape[1]


def _scenario(entry: dict[str, Any], registry: Registry) -> Scenario:
    """The validated scenario of ``evaluate``'s arguments, built from them directly; each problem names the
    argument it comes from."""
    try:
        return validate_scenario(entry, "evaluate()", registry)
    except ScenarioError as exc:
        problems = [item.removeprefix("evaluate(): ") for item in exc.problems]
        for field, argument in _ARGUMENTS.items():
            problems = [argument + p[len(field):] if p.startswith(field) else p for p in problems]
        raise ScenarioError("evaluate: " + "; ".join(problems), problems) from None


def _last_line(m: Matchup) -> str:
    return ((m.detail or "").strip().splitlines() or ["?"])[-1]


def _none_finished(matchups: list[Matchup], results: str | Path | None) -> str:
    """The message when no attack finished: each one's status and last line, and where the records are."""
    failed = "; ".join(f"{m.attack} ({m.status}: {_last_line(m)})" for m in matchups)
    kept = f"their records are in {Path(results) / 'arena.db'}" if results is not None else \
        "pass results=FOLDER to keep their records"
    return f"evaluate: no attack finished, so there is no robust accuracy to report: {failed}; {kept}"


class _Given:
    """Registers the caller's module as a pretrained model plugin and, when given, the caller's images as a dataset
    plugin."""

    model_name = "evaluate.model"
    dataset_name = "evaluate.data"

    def __init__(self, module: nn.Module, images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 classes: int = 0) -> None:
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
                assert images is not None and labels is not None, "registered only when images are given"
                return images, labels

        self.model, self.data = GivenModel, GivenData if images is not None else None

    @_hookimpl
    def arena_register_models(self, register: Callable[[type[Model]], None]) -> None:
        register(self.model)

    @_hookimpl
    def arena_register_datasets(self, register: Callable[[type[Dataset]], None]) -> None:
        if self.data is not None:
            register(self.data)
