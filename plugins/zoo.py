"""RobustBench's model zoo through the real ``robustbench`` package (``pip install 'adversarial-arena[robustbench]'``).

``{name: robustbench, model: Carmon2019Unlabeled, threat: Linf}``: RobustBench's own architecture and normalisation
(inside the model, so attacks see [0, 1] images), built and loaded by its ``load_model`` from its model folder
(``<model_dir>/<dataset>/<threat>/<model>.pt``, ``./models`` by default as in RobustBench). Never trained by the arena;
identified by the checkpoint's hash. Offline when the checkpoint is there; downloaded only when asked.

What is checked with the scenario, before any work, each in one line: the ``robustbench`` that imports is RobustBench's
own (the torchattacks wheel ships an old copy that can shadow it or overwrite its files), the name is in the zoo, and
the checkpoint is there and is weights (not the HTML page a failed Google-Drive download leaves, not truncated).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import sys
import warnings
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from torch import nn

from arena import Model, Param, PluginError, hookimpl, unknown_name_message
from arena_plugins.weights import files_hash, weights_problem

#: Each data set's classes and image shape ``(C, H, W)`` in RobustBench.
DATASETS = {"cifar10": (10, (3, 32, 32)), "cifar100": (100, (3, 32, 32)), "imagenet": (1000, (3, 224, 224))}
INSTALL = "pip install 'adversarial-arena[robustbench]'"


def _owner(folder: Path) -> str:
    """The installed distribution whose files include ``folder/__init__.py`` (say ``torchattacks 3.5.1``)."""
    for dist in importlib.metadata.distributions():
        for file in dist.files or ():
            if file.parts[:1] == (folder.name,) and file.name == "__init__.py" and len(file.parts) == 2:
                if Path(dist.locate_file(file)).resolve() == (folder / "__init__.py").resolve():
                    return f"{dist.metadata['Name']} {dist.version}"
    return "another package"


def _recorded(path: Path, value: str) -> bool:
    """True when ``path`` still has the SHA-256 its distribution's RECORD lists (urlsafe base64, unpadded)."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()
    return digest == value


@cache
def package_problem() -> str | None:
    """Why ``import robustbench`` would not give RobustBench's own package, else None; found without importing it,
    once a process (it hashes the package's files against their RECORD)."""
    spec = importlib.util.find_spec("robustbench") if "robustbench" not in sys.modules else sys.modules[
        "robustbench"].__spec__
    if spec is None or spec.origin is None:
        return f"RobustBench is not installed; {INSTALL}"
    folder = Path(spec.origin).parent
    try:
        dist = importlib.metadata.distribution("robustbench")
    except importlib.metadata.PackageNotFoundError:
        return (f"`import robustbench` finds {folder}, an old copy that {_owner(folder)} installs (no downloads, an "
                f"old zoo), not RobustBench; {INSTALL}")
    real = Path(dist.locate_file("robustbench")).resolve()
    if real != folder.resolve():
        return (f"`import robustbench` finds {folder}, an old copy that {_owner(folder)} installs, before RobustBench "
                f"{dist.version} in {real}; remove the copy's folder, or put RobustBench's site-packages first")
    changed = [f for f in dist.files or () if f.parts[0] == "robustbench" and f.suffix == ".py" and f.hash
               and not _recorded(Path(dist.locate_file(f)), f.hash.value)]
    if changed:
        return (f"{len(changed)} of RobustBench {dist.version}'s files in {folder} (such as {changed[0]}) were "
                "overwritten, by the torchattacks wheel's old copy if it was installed after; reinstall RobustBench "
                f"last: pip install --no-deps --force-reinstall robustbench=={dist.version}")
    return None


@cache
def robustbench() -> SimpleNamespace:
    """RobustBench's zoo (``model_dicts``) and ``load_model``, imported once.

    RobustBench 1.1.1's ``__init__`` imports its ``benchmark``, which imports the original AutoAttack as the module
    ``autoattack`` (installed from GitHub, not PyPI); ``pyautoattack`` is that code repackaged, so when no
    ``autoattack`` is installed it is registered under that name. The arena never calls ``benchmark``."""
    if importlib.util.find_spec("autoattack") is None:
        import pyautoattack
        import pyautoattack.state

        sys.modules.setdefault("autoattack", pyautoattack)
        sys.modules.setdefault("autoattack.state", pyautoattack.state)
    try:
        with warnings.catch_warnings():  # its loaders import the deprecated pkg_resources
            warnings.simplefilter("ignore")
            from robustbench.model_zoo import model_dicts
            from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
            from robustbench.utils import load_model
    except Exception as exc:  # a dependency missing or broken: say so in one line
        raise PluginError(f"robustbench cannot be imported ({type(exc).__name__}: {exc}); reinstall it: "
                          f"{INSTALL}") from None
    return SimpleNamespace(model_dicts=model_dicts, Dataset=BenchmarkDataset, Threat=ThreatModel,
                           load_model=load_model)


def zoo_models(dataset: str, threat: str) -> dict[str, dict[str, Any]]:
    """RobustBench's zoo for one data set and threat: each model's entry (architecture and checkpoint ids)."""
    rb = robustbench()
    return rb.model_dicts[rb.Dataset(dataset)].get(rb.Threat(threat), {})


def zoo_entry(dataset: str, threat: str, model: str) -> dict[str, Any] | None:
    """RobustBench's entry of ``model``, None when the zoo has no such model."""
    return zoo_models(dataset, threat).get(model)


def checkpoints(model_dir: Path, dataset: str, threat: str, model: str, entry: dict[str, Any]) -> list[Path]:
    """Where RobustBench's ``load_model`` keeps the model's checkpoint (one per member of an ensemble)."""
    path = model_dir / dataset / threat / f"{model}.pt"
    ids = entry["gdrive_id"]
    return [Path(f"{path}_m{i}.pt") for i in range(len(ids))] if isinstance(ids, list) else [path]


class RobustBenchModel(Model):
    """A model of RobustBench's zoo, built and loaded by the real ``robustbench`` package from its model folder."""

    name = "robustbench"
    pretrained = True
    params = {
        "model": Param(str, help="the zoo's name, e.g. Carmon2019Unlabeled (robustbench.ai lists them)"),
        "dataset": Param(str, "cifar10", "the data set the model was trained on", choices=tuple(DATASETS)),
        "threat": Param(str, "Linf", "the leaderboard the model is on", choices=("Linf", "L2", "corruptions")),
        "model_dir": Param(str, "models", "RobustBench's model folder (relative to the working folder, as "
                                          "RobustBench's load_model reads it)"),
        "download": Param(bool, False, "download a missing checkpoint through robustbench (Google Drive)"),
    }

    @classmethod
    def check_params(cls, values: dict[str, Any]) -> dict[str, str]:
        problem = package_problem()
        if problem:
            return {"name": problem}
        dataset, threat, model = values["dataset"], values["threat"], values["model"]
        entry = zoo_entry(dataset, threat, model)
        if entry is None:
            return {"model": unknown_name_message(f"RobustBench model for {dataset} {threat}", model,
                                                  zoo_models(dataset, threat), suggestions=3, list_known=False) +
                    "; pick one from robustbench.ai, or set dataset and threat to its leaderboard"}
        hub = "timm's" if entry["gdrive_id"] is None else "torchvision's" if (
            dataset == "imagenet" and "Standard" in model) else None  # as load_model decides
        if hub:
            return {"model": f"robustbench loads {model} from {hub} hub, not from its model folder; the arena loads "
                             "zoo models only from a checkpoint file (use {name: timm, ...} or {name: torchvision, "
                             "...} with checkpoint: FILE)"}
        for path in checkpoints(Path(values["model_dir"]), dataset, threat, model, entry):
            if not path.exists() and values["download"]:
                continue
            if not path.exists():
                return {"model": f"{path} not found: RobustBench's checkpoint of {model} goes there; set "
                                 f"download: true to fetch it, or model_dir to the folder that holds {dataset}/"
                                 f"{threat}/{model}.pt"}
            problem = weights_problem(path)
            if problem:
                return {"model": problem}
        return {}

    def paths(self) -> list[Path]:
        """The checkpoint file(s) ``load_model`` reads."""
        return checkpoints(Path(self.model_dir), self.dataset, self.threat, self.model,
                           zoo_entry(self.dataset, self.threat, self.model))

    def build(self, num_classes: int) -> nn.Module:
        try:
            net = robustbench().load_model(self.model, model_dir=self.model_dir, dataset=self.dataset,
                                           threat_model=self.threat)
        except Exception as exc:  # a download that went wrong fails deep in torch.load: say what the file is
            problems = [p for p in map(weights_problem, self.paths()) if p]
            raise PluginError(f"robustbench model {self.model}: {problems[0] if problems else exc}") from None
        return net.eval()

    def identity(self) -> str:
        return files_hash(self.paths())

    def classes_problem(self, num_classes: int) -> str | None:
        classes = DATASETS[self.dataset][0]
        if classes == num_classes:
            return None
        return (f"robustbench {self.model} ({self.dataset}) outputs {classes} logits; the data set has {num_classes} "
                f"classes: evaluate it on {self.dataset}, or set dataset: to the zoo it comes from")

    def input_problem(self, shape: tuple[int, ...]) -> str | None:
        wanted = DATASETS[self.dataset][1]
        if tuple(shape) == wanted:
            return None
        return (f"robustbench {self.model} ({self.dataset}) takes {'×'.join(map(str, wanted))} images; the data set "
                f"gives {'×'.join(map(str, shape))}")


@hookimpl
def arena_register_models(register) -> None:
    register(RobustBenchModel)
