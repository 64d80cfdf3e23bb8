"""Play every model × defense × attack matchup of a scenario: white-box, eval mode, inputs in [0, 1], audited.

Each matchup is stored as soon as it finishes, so an interrupted or partly failing run loses nothing already
computed. An exception inside a plugin fails only the matchups that need that plugin; the run goes on.
"""

from __future__ import annotations

import hashlib
import logging
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from arena.audit import audit
from arena.kinds import DataError, Dataset, Defense
from arena.registry import Registry
from arena.scenario import ModelRef, PluginRef, Scenario
from arena.store import Matchup, Store
from arena.training import Trainer, WeightsCache, content_key, fingerprint, seed_everything

log = logging.getLogger(__name__)


def derive_seed(seed: int, *names: str) -> int:
    """A seed for one piece of work, fixed by the scenario seed and its names, not by the order work runs in."""
    return int(hashlib.sha256(repr((seed, *names)).encode()).hexdigest()[:8], 16)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Predicted labels (on the CPU) of ``model`` in eval mode."""
    model.eval()
    return torch.cat([model(x.to(device)).argmax(1).cpu() for x in images.split(batch_size)])


@dataclass
class _Data:
    """The scenario's evaluation slice, and its training data loaded only when a model must be trained."""

    dataset: Dataset
    scenario: Scenario
    images: torch.Tensor
    labels: torch.Tensor
    _train: tuple[torch.Tensor, torch.Tensor, str] | None = None

    @classmethod
    def load(cls, scenario: Scenario, registry: Registry) -> _Data:
        ref = scenario.dataset
        dataset = registry.get("dataset", ref.name).cls(**ref.params)
        images, labels = dataset.load(ref.split, scenario.data_dir())
        if ref.samples is not None:
            if ref.samples > len(images):
                raise DataError(
                    f"{scenario.path}: dataset.samples = {ref.samples}, but the {ref.split} split of "
                    f"{ref.name} has {len(images)} images; lower it or leave it unset to use all"
                )
            images, labels = images[: ref.samples], labels[: ref.samples]
        return cls(dataset, scenario, images, labels)

    def train(self) -> tuple[torch.Tensor, torch.Tensor, str]:
        """Training images, labels and their content fingerprint (loaded once per run)."""
        if self._train is None:
            images, labels = self.dataset.load("train", self.scenario.data_dir())
            n = self.scenario.dataset.train_samples
            images, labels = images[:n], labels[:n]
            self._train = (images, labels, fingerprint(images, labels))
        return self._train


@dataclass
class Arena:
    """Plays one scenario into the store of a results folder; built by ``arena run`` or by Python code and tests."""

    scenario: Scenario
    registry: Registry
    results_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cache: WeightsCache = field(default_factory=WeightsCache)
    progress: bool = True
    #: Replay every matchup even when the store holds one with the same key.
    fresh: bool = False
    weights: dict[str, dict[str, str]] = field(default_factory=dict)
    store: Store = field(init=False)

    def play(self) -> str:
        """Run every matchup and return the run id; the store is opened only once the data has loaded."""
        seed_everything(self.scenario.seed)
        data = _Data.load(self.scenario, self.registry)
        self.store = Store(self.results_dir)
        run_id = self.store.start_run(self.scenario, len(data.images), self.device.type)
        log.info("run %s: %s, %s, %d samples", run_id, self.scenario.name, self.scenario.threat, len(data.images))
        status = "interrupted"
        try:
            for model_ref in self.scenario.models:
                for defense_ref in self.scenario.defenses:
                    for matchup in self._play_pair(data, model_ref, defense_ref):
                        self.store.add_matchup(run_id, matchup)
                        log.info("%s", describe(matchup))
            status = "complete"
        finally:
            self.store.finish_run(run_id, status, self.weights)
        return run_id

    def _play_pair(self, data: _Data, model_ref: ModelRef, defense_ref: PluginRef) -> Iterator[Matchup]:
        """Reuse the matchups this store already holds; prepare the defended model only for the others."""
        started = time.perf_counter()
        attacks = self.scenario.attacks
        try:
            fields = self._weights_fields(data, model_ref, defense_ref)
            weights_key = content_key(fields)
            keys = {a.key: self._matchup_key(weights_key, model_ref, defense_ref, a) for a in attacks}
            earlier = {} if self.fresh else {name: self.store.find(key) for name, key in keys.items()}
            source = "unused"
            if not all(earlier.get(a.key) for a in attacks):
                model, source = self._defended_model(data, model_ref, defense_ref, fields, weights_key)
                clean = (predict(model, data.images, self.scenario.batch_size, self.device) == data.labels).numpy()
            self.weights[f"{model_ref.key}/{defense_ref.key}"] = {"key": weights_key, "source": source}
        except Exception:
            detail = traceback.format_exc()
            log.error("preparing %s + %s failed:\n%s", model_ref.key, defense_ref.key, detail)
            for attack_ref in attacks:
                yield _record((model_ref, defense_ref, attack_ref), len(data.images), started, "error", detail=detail)
            return
        for attack_ref in attacks:
            found = earlier.get(attack_ref.key)
            if found is not None:
                yield found
            else:
                result = self._attack(model, data, clean, (model_ref, defense_ref, attack_ref))
                yield replace(result, key=keys[attack_ref.key])

    def _weights_fields(self, data: _Data, model_ref: ModelRef, defense_ref: PluginRef) -> dict[str, Any]:
        """Everything that determines a model's trained weights; their hash is the weights-cache key."""
        defense = self.registry.get("defense", defense_ref.name).cls
        return {
            "model": model_ref.name,
            "model_params": model_ref.params,
            "train": model_ref.train.model_dump(),
            "defense": [defense_ref.name, defense_ref.params] if defense.changes_training else None,
            "dataset": [self.scenario.dataset.name, self.scenario.dataset.params],
            "train_data": data.train()[2],
            "seed": self.scenario.seed,
            "device": self.device.type,
        }

    def _matchup_key(self, weights_key: str, *refs: PluginRef) -> str:
        """Everything that determines a matchup's result, plugin source included, so a result can be reused.

        Seed and device are covered by the weights key.
        """
        plugins = [
            [ref.name, ref.params, self.registry.get(kind, ref.name).code_hash]
            for kind, ref in zip(("model", "defense", "attack"), refs)
        ]
        ds = self.scenario.dataset
        return content_key({
            "weights": weights_key, "plugins": plugins, "threat": [self.scenario.threat.norm, self.scenario.threat.eps],
            "eval": [ds.name, ds.params, ds.split, ds.samples], "batch_size": self.scenario.batch_size,
        })

    def _defended_model(
        self, data: _Data, model_ref: ModelRef, defense_ref: PluginRef, fields: dict[str, Any], key: str
    ) -> tuple[nn.Module, str]:
        """The defended model, its weights loaded or trained (cached under ``key``), and whether they were trained."""
        model_plugin = self.registry.get("model", model_ref.name).cls(**model_ref.params)
        defense: Defense = self.registry.get("defense", defense_ref.name).cls(**defense_ref.params)
        seed_everything(self.scenario.seed)
        net = model_plugin.build(data.dataset.num_classes)
        label = f"{model_ref.key}+{defense_ref.key}" if defense.changes_training else model_ref.key
        if self.cache.load(key, net):
            source = "cache"
            log.info("%s: loaded cached weights %s", label, self.cache.path(key))
        else:
            trainer = Trainer(model_ref.train, self.scenario.seed, self.device, label, self.progress)
            train_images, train_labels, _ = data.train()
            defense.train(net, train_images, train_labels, trainer)
            source = "trained"
            log.info("%s: trained, weights cached at %s", label, self.cache.save(key, net, fields))
        net.to(self.device).eval()
        return defense.wrap(net).to(self.device).eval(), source

    def _attack(
        self, model: nn.Module, data: _Data, clean_correct: np.ndarray, refs: tuple[ModelRef, PluginRef, PluginRef]
    ) -> Matchup:
        """Attack the initially-correct samples batch by batch, auditing every adversarial batch."""
        started = time.perf_counter()
        threat, size = self.scenario.threat, self.scenario.batch_size
        keys = [ref.key for ref in refs]
        desc = "{2} vs {0}+{1}".format(*keys)
        seed_everything(derive_seed(self.scenario.seed, *keys))
        robust = np.zeros(len(data.images), dtype=bool)
        norms: list[torch.Tensor] = []
        try:
            attack = self.registry.get("attack", refs[2].name).cls(model, threat, **refs[2].params)
            targets = torch.from_numpy(np.flatnonzero(clean_correct))
            for index in tqdm(targets.split(size), desc=desc, disable=not self.progress, leave=False, unit="batch"):
                images, labels = data.images[index].to(self.device), data.labels[index].to(self.device)
                model.eval()
                adversarial = attack(images, labels)
                report = audit(refs[2].name, images, adversarial, threat)
                norms.append(report.norms.cpu())
                if report.violation:
                    return _record(refs, len(robust), started, "invalid", report.violation, clean_correct, None, norms)
                robust[index.numpy()] = (predict(model, adversarial, size, self.device) == labels.cpu()).numpy()
        except Exception:
            detail = traceback.format_exc()
            log.error("%s failed:\n%s", desc, detail)
            return _record(refs, len(robust), started, "error", detail, clean_correct)
        return _record(refs, len(robust), started, "ok", None, clean_correct, robust, norms)


def _record(
    refs: tuple[ModelRef, PluginRef, PluginRef], samples: int, started: float, status: str, detail: str | None = None,
    clean_correct: np.ndarray | None = None, robust: np.ndarray | None = None, norms: list[torch.Tensor] = (),
) -> Matchup:
    """The stored result: accuracies over all samples, attack success over the initially-correct ones."""
    model_ref, defense_ref, attack_ref = refs
    measured = torch.cat(list(norms)) if norms else None
    attacked = int(clean_correct.sum()) if clean_correct is not None else 0
    return Matchup(
        model=model_ref.key, defense=defense_ref.key, attack=attack_ref.key,
        params={
            "model": {"plugin": model_ref.name, **model_ref.params, "train": model_ref.train.model_dump()},
            "defense": {"plugin": defense_ref.name, **defense_ref.params},
            "attack": {"plugin": attack_ref.name, **attack_ref.params},
        },
        status=status, detail=detail, samples=samples, wall_time_s=time.perf_counter() - started,
        clean_accuracy=float(clean_correct.mean()) if clean_correct is not None else None,
        robust_accuracy=float(robust.mean()) if robust is not None else None,
        attack_success_rate=1 - float(robust[clean_correct].sum()) / attacked if robust is not None and attacked else None,
        mean_norm=float(measured.double().mean()) if measured is not None and len(measured) else None,
        max_norm=float(measured.max()) if measured is not None and len(measured) else None,
        clean_correct=clean_correct, robust_correct=robust,
    )


def describe(m: Matchup) -> str:
    """One log line for a finished matchup."""
    head = f"{m.attack} vs {m.model}+{m.defense}: "
    if m.status == "ok":
        origin = f"reused from run {m.reused_from}" if m.reused_from else f"{m.wall_time_s:.1f} s"
        return head + f"clean {m.clean_accuracy:.1%}, robust {m.robust_accuracy:.1%} ({origin})"
    return head + f"{m.status.upper()}: {(m.detail or '').strip().splitlines()[-1]}"
