"""The networks a run attacks: each model plugin built once, its weights from memory, the weights cache or trained
(the defended model and a transfer attack's source alike), checked for one logit per class, with a record of where
each set of weights came from (its provenance)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from arena import keys
from arena.data import Data
from arena.defended import Defended
from arena.kinds import Defense, Model, Postprocessor, Preprocessor, TrainingDefense
from arena.registry import PluginError, Registry
from arena.runtime import Runtime
from arena.schema import NO_DEFENSE, AttackRef, DefenseRef, ModelRef, PluginRef, Scenario
from arena.training import Trainer, WeightsCache, seed_everything

log = logging.getLogger(__name__)


@dataclass
class Networks:
    """Builds, trains and caches a run's networks; one per weights key, kept for the run."""

    scenario: Scenario
    registry: Registry
    device: torch.device
    cache: WeightsCache
    runtime: Runtime
    progress: bool = True
    #: Where each weights key's weights came from: ``pretrained``, ``cache`` or ``trained``.
    provenance: dict[str, str] = field(default_factory=dict)
    _networks: dict[str, nn.Module] = field(default_factory=dict, repr=False)
    _prepared: dict[int, nn.Module] = field(default_factory=dict, repr=False)
    _models: dict[str, Model] = field(default_factory=dict, repr=False)
    #: A pretrained model's identity (its checkpoint's hash), read once a run rather than once per key.
    _identities: dict[str, str] = field(default_factory=dict, repr=False)

    def weights_key(self, data: Data, model_ref: ModelRef, defense_ref: DefenseRef) -> tuple[str, dict[str, Any]]:
        """The weights-cache key of a model under a defense entry, and the fields it hashes.

        Only a training-time defense changes the weights, so ``cnn + art.jpeg`` shares the weights of ``cnn + none``.
        """
        training, train_data = self.training(defense_ref), data.fingerprint()
        model = self.model(model_ref)
        if model.pretrained and model_ref.key not in self._identities:
            self._identities[model_ref.key] = model.identity()
        identity = self._identities[model_ref.key] if model.pretrained else None
        return keys.weights_key(self.scenario, model_ref, training, train_data, self.device.type, identity)

    def training(self, defense_ref: DefenseRef) -> PluginRef | None:
        """The entry's training-time defense, if any (validation allows at most one)."""
        found = self.registry.training_stages(defense_ref.chain)
        return found[0] if found else None

    def model(self, model_ref: ModelRef) -> Model:
        """The model plugin of an entry, built once per run (a pretrained one may hash a checkpoint)."""
        if model_ref.key not in self._models:
            self._models[model_ref.key] = self.registry.build(Model, model_ref)
        return self._models[model_ref.key]

    def transfer_source(self, model_ref: ModelRef, attack_ref: AttackRef) -> tuple[ModelRef, DefenseRef]:
        """The model and defense a transfer attack crafts on (the target's own model unless it names another)."""
        source = attack_ref.source
        assert source is not None, "only a transfer attack has a source"
        by_key = {ref.key: ref for ref in self.scenario.models}
        return (by_key[source.model] if source.model else model_ref), source.defense

    def network(self, data: Data, model_ref: ModelRef, defense_ref: DefenseRef) -> nn.Module:
        """The trained network (no inference-time stages): from memory, the weights cache, or trained and cached."""
        key, fields = self.weights_key(data, model_ref, defense_ref)
        if key in self._networks:
            return self._networks[key]
        training = self.training(defense_ref)
        model_plugin = self.model(model_ref)
        seed_everything(self.scenario.seed)
        net = model_plugin.build(data.dataset.num_classes)
        check_width(net, data, model_ref)
        label = f"{model_ref.key}+{training.key}" if training else model_ref.key
        if model_plugin.pretrained and training is None:
            self.provenance[key] = "pretrained"
        elif self.cache.load(key, net):
            self.provenance[key] = "cache"
            log.info("%s: loaded cached weights %s", label, self.cache.path(key))
        else:
            trainer = Trainer(
                model_ref.train, self.scenario.seed, self.device, data.dataset.num_classes, label, self.progress,
                baseline=lambda: self.network(data, model_ref, NO_DEFENSE),
            )
            train_images, train_labels, _ = data.train()
            if training is None:
                trainer.fit(net, train_images, train_labels)
            else:
                defense = self.registry.build(TrainingDefense, training)
                seed_everything(self.scenario.seed)
                defense.train(net, train_images, train_labels, trainer)
            self.provenance[key] = "trained"
            log.info("%s: trained, weights cached at %s", label, self.cache.save(key, net, fields))
        self._networks[key] = net.to(self.device).eval()
        return self._networks[key]

    def prepared(self, data: Data, model_ref: ModelRef, defense_ref: DefenseRef) -> nn.Module:
        """The trained network as the runtime settings run it (compiled once per network, not per matchup)."""
        network = self.network(data, model_ref, defense_ref)
        if id(network) not in self._prepared:  # networks live as long as the run, so their ids stay theirs
            self._prepared[id(network)] = self.runtime.prepare(network)
        return self._prepared[id(network)]

    def defended(
        self, data: Data, model_ref: ModelRef, defense_ref: DefenseRef, attack_ref: AttackRef | None = None
    ) -> Defended:
        """The defended module of an entry; ``attack_ref`` sets how it is differentiated (BPDA, EOT)."""
        stages = [self.registry.build(Defense, ref) for ref in defense_ref.chain]
        bpda, eot_samples = (attack_ref.bpda, attack_ref.eot_samples) if attack_ref else (True, 1)
        return Defended(
            self.prepared(data, model_ref, defense_ref),
            pre=[cast(Preprocessor, s) for s in stages if s.stage == "preprocess"],
            post=[cast(Postprocessor, s) for s in stages if s.stage == "postprocess"],
            bpda=bpda, eot_samples=eot_samples,
        ).to(self.device).eval()


def check_width(net: nn.Module, data: Data, model_ref: ModelRef) -> None:
    """A model must output one logit per class of the data set (the seed's CNN emitted 64 for 10 classes)."""
    with torch.no_grad():
        logits = net.eval()(data.images[:2])
    classes = data.dataset.num_classes
    if not isinstance(logits, torch.Tensor) or logits.shape[:1] != data.images[:2].shape[:1] or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise PluginError(f"model {model_ref.name!r} returns {shape} for {len(data.images[:2])} images; it must "
                          f"return one tensor of logits, [N, {classes}]")
    if not torch.isfinite(logits).all():
        raise PluginError(f"model {model_ref.name!r} returns NaN or infinite logits; no prediction can be measured "
                          "from them: check its weights and input normalisation")
    width = logits.shape[-1]
    if width != classes:
        raise PluginError(f"model {model_ref.name!r} outputs {width} logits per image but {data.dataset.name} has "
                          f"{classes} classes; its last layer must have num_classes ({classes}) outputs")
