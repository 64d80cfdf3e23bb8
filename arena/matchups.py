"""Play every model × defense × attack matchup of a scenario (the tournament): white-box and adaptive unless told
otherwise, eval mode, inputs in [0, 1]; ``arena.engine`` plays each matchup batch by batch, audited.

Each matchup is stored as soon as it finishes, so an interrupted or partly failing run loses nothing already
computed. An exception inside a plugin fails only the matchups that need that plugin; the run goes on.
"""

from __future__ import annotations

import importlib.util
import logging
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from arena import conditions
from arena.conditions import SKIPPED, reasons, skip_reason
from arena.cost import Counted
from arena.defended import Defended, describe_gradient
from arena.engine import Engine, predict, record_matchup
from arena.errors import ArenaError
from arena.kinds import Attack, DataError, Dataset, Model
from arena.leaderboard import Row, board, write_summary
from arena.records import Matchup
from arena.registry import PluginError, Registry, source_hash
from arena.report import write_report
from arena.runtime import Runtime
from arena.scenario import DEFAULT_EXAMPLES, NO_DEFENSE, AttackRef, DefenseRef, ModelRef, PluginRef, Scenario
from arena.store import Store
from arena.threat import ThreatModel
from arena.training import Trainer, WeightsCache, content_key, derive_seed, fingerprint, seed_everything

log = logging.getLogger(__name__)
#: A hash of ``arena/conditions.py``: results of conditional entries decided by older rules are not reused.
CONDITIONS_CODE = source_hash(conditions.__file__)



@dataclass
class Data:
    """The scenario's evaluation slice, and its training data loaded only when a model must be trained."""

    dataset: Dataset
    scenario: Scenario
    images: torch.Tensor
    labels: torch.Tensor
    _train: tuple[torch.Tensor, torch.Tensor, str] | None = None
    #: The training data's content hash when known without reading it (a Ray worker gets the driver's).
    known_fingerprint: str | None = None
    _moved: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, scenario: Scenario, registry: Registry) -> Data:
        ref = scenario.dataset
        dataset = registry.build("dataset", ref)
        images, labels = dataset.load(ref.split, scenario.data_dir())
        if ref.samples is not None:
            if ref.samples > len(images):
                raise DataError(
                    f"{scenario.path}: dataset.samples = {ref.samples}, but the {ref.split} split of "
                    f"{ref.name} has {len(images)} images; lower it or leave it unset to use all"
                )
            images, labels = images[: ref.samples], labels[: ref.samples]
        return cls(dataset, scenario, images, labels)

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The evaluation images and labels on ``device``: moved there once per run, not once per batch, and
        contiguous whatever the dataset's layout (the original AutoAttack code ``view``s its inputs)."""
        if device not in self._moved:
            self._moved[device] = (self.images.to(device).contiguous(), self.labels.to(device).contiguous())
        return self._moved[device]

    def fingerprint(self) -> str:
        """The training data's content hash, which every weights key includes."""
        return self.known_fingerprint or self.train()[2]

    def train(self) -> tuple[torch.Tensor, torch.Tensor, str]:
        """Training images, labels and their content fingerprint (loaded once per run)."""
        if self._train is None:
            images, labels = self.dataset.load("train", self.scenario.data_dir())
            n = self.scenario.dataset.train_samples
            if n is not None and n > len(images):
                raise DataError(f"{self.scenario.path}: dataset.train_samples = {n}, but the train split of "
                                f"{self.scenario.dataset.name} has {len(images)} images; lower it or leave it unset")
            images, labels = images[:n], labels[:n]
            self._train = (images, labels, fingerprint(images, labels))
        return self._train


class LocalExecutor:
    """Plays the pairs one after the other in this process: the default."""

    def play(self, arena: Arena, data: Data, pairs: list[tuple[ModelRef, DefenseRef]]) -> Iterator[Matchup]:
        for model_ref, defense_ref in pairs:
            yield from arena.play_pair(data, model_ref, defense_ref, *arena.prepare(data, model_ref, defense_ref))


#: The opt-in reporters and the module each needs.
REPORTERS = {"mlflow": "mlflow"}


def require_reporters(names: list[str]) -> None:
    """Refuse, before any work, a reporter whose package is not installed."""
    for name in names:
        if importlib.util.find_spec(REPORTERS[name]) is None:
            raise ArenaError(f"report_to {name}: the {REPORTERS[name]} package is not installed; pip install "
                             f"'arena[{name}]' (or drop {name} from report_to / --report-to)")


class Executor(Protocol):
    """Plays a run's model × defense pairs and yields their matchups as they finish, in any order."""

    def play(self, arena: Arena, data: Data, pairs: list[tuple[ModelRef, DefenseRef]]) -> Iterator[Matchup]: ...


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
    #: The threat model this run plays; the scenario's (first) one unless an ε sweep gives another.
    threat: ThreatModel | None = None
    #: Write the report (pictures and ``leaderboard.html``) when the run completes; the JSON summary is always written.
    report: bool = False
    #: Opt-in reporters to notify besides the scenario's ``report_to`` (``arena run --report-to``).
    report_to: tuple[str, ...] = ()
    #: Opt-in speed settings: bf16 attack gradients, ``torch.compile``, channels-last (``arena.runtime``).
    runtime: Runtime = field(default_factory=Runtime)
    #: Opt-in active tests besides the scenario's ``active_tests`` (``arena run --active-tests``).
    active_tests: tuple[str, ...] = ()
    weights: dict[str, dict[str, str]] = field(default_factory=dict)
    store: Store = field(init=False)
    #: Written when a run completes: its leaderboard rows, ``runs/<run id>.json`` and the report folder (None
    #: without ``report``).
    table: list[Row] | None = field(default=None, init=False)
    summary_path: Path | None = field(default=None, init=False)
    report_path: Path | None = field(default=None, init=False)
    _networks: dict[str, nn.Module] = field(default_factory=dict, init=False, repr=False)
    _prepared: dict[int, nn.Module] = field(default_factory=dict, init=False, repr=False)
    _weights_source: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _models: dict[str, Model] = field(default_factory=dict, init=False, repr=False)
    #: A pretrained model's identity (its checkpoint's hash), read once a run rather than once per key.
    _identities: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def play(self, executor: Executor | None = None) -> str:
        """Run every matchup and return the run id; the store is opened only once the data has loaded. The
        ``executor`` plays the model × defense pairs (in this process by default; ``arena.executor.RayExecutor``
        spreads them over a Ray cluster); this process alone writes the store, one matchup per transaction."""
        self.threat = self.threat or self.scenario.threat
        report_to = sorted({*self.scenario.report_to, *self.report_to})
        require_reporters(report_to)
        seed_everything(self.scenario.seed)
        data = Data.load(self.scenario, self.registry)
        data.train()  # every weights key hashes the training data: read (and check) it before any work
        self.store = Store(self.results_dir)
        classes = getattr(data.dataset, "classes", ())
        run_id = self.store.start_run(self.scenario, self.threat, len(data.images), self.device.type, classes,
                                      fingerprint(data.images, data.labels), asdict(self.runtime))
        log.info("run %s: %s, %s, %d samples", run_id, self.scenario.name, self.threat, len(data.images))
        status = "interrupted"
        self.registry.notify("run_started", run_id=run_id, run=self.store.run(run_id), results_dir=self.results_dir,
                             report_to=report_to)
        pairs = [(m, d) for m in self.scenario.models for d in self.scenario.defenses]
        try:
            for matchup in (executor or LocalExecutor()).play(self, data, pairs):
                self.store.add_matchup(run_id, matchup)
                log.info("%s", describe(matchup))
                self.registry.notify("matchup_finished", run_id=run_id, matchup=matchup,
                                     results_dir=self.results_dir)
            status = "complete"
        finally:
            self.store.finish_run(run_id, status, self.weights)
            if status == "complete":
                self._outputs(run_id)
            self.registry.notify("run_finished", run_id=run_id, status=status, results_dir=self.results_dir,
                                 summary=self.summary_path, report=self.report_path)
        return run_id

    def _outputs(self, run_id: str) -> None:
        """A complete run's leaderboard rows, JSON summary and, if asked for, its report folder."""
        run = self.store.run(run_id)
        self.table = board(self.store, run)
        self.summary_path = write_summary(self.store, run, self.table)
        self.report_path = write_report(self.store, run, self.table).parent if self.report else None

    def matchup_keys(self, data: Data, model_ref: ModelRef, defense_ref: DefenseRef) -> dict[str, str]:
        """Each attack's matchup key for this pair (a cascaded attack's includes the keys of those before it)."""
        weights_key = self.weights_key(data, model_ref, defense_ref)[0]
        keys: dict[str, str] = {}
        for index, attack_ref in enumerate(self.scenario.attacks):
            after = [keys[ref.key] for ref in self.scenario.cascade_before(index)]
            keys[attack_ref.key] = self._matchup_key(data, weights_key, model_ref, defense_ref, attack_ref, after)
        return keys

    def prepare(
        self, data: Data, model_ref: ModelRef, defense_ref: DefenseRef
    ) -> tuple[dict[str, str], dict[str, Matchup]]:
        """The pair's matchup keys and the matchups the store already holds for them (none with ``fresh``); both
        empty when the pair cannot even be keyed, in which case ``play_pair`` records why, matchup by matchup."""
        try:
            keys = self.matchup_keys(data, model_ref, defense_ref)
        except Exception:
            return {}, {}
        found = {} if self.fresh else {name: self.store.find(key) for name, key in keys.items()}
        return keys, {name: m for name, m in found.items() if m is not None}

    def play_pair(
        self, data: Data, model_ref: ModelRef, defense_ref: DefenseRef, keys: dict[str, str],
        earlier: dict[str, Matchup],
    ) -> Iterator[Matchup]:
        """The pair's matchups: those in ``earlier`` as they are, the others played; the defended model is prepared
        only when something is left to play. Needs no store, so any process with the data can run it.

        A cascaded attack runs only on the samples every attack before it in its cascade failed on; one with
        ``when`` conditions is skipped (recorded, no passes) unless one holds (``arena.conditions``).
        """
        started = time.perf_counter()
        attacks = self.scenario.attacks
        try:
            weights_key = self.weights_key(data, model_ref, defense_ref)[0]
            keys = keys or self.matchup_keys(data, model_ref, defense_ref)
            if not all(a.key in earlier for a in attacks):
                target = self.defended(data, model_ref, defense_ref)
                seed_everything(derive_seed(self.scenario.seed, model_ref.key, defense_ref.key))
                images = data.on(self.device)[0]
                clean = (predict(target, images, self.scenario.batch_size, self.device) == data.labels).numpy()
            self.weights[f"{model_ref.key}/{defense_ref.key}"] = {
                "key": weights_key, "source": self._weights_source.get(weights_key, "unused"),
            }
        except Exception:
            detail = traceback.format_exc()
            log.error("preparing %s + %s failed:\n%s", model_ref.key, defense_ref.key, detail)
            for attack_ref in attacks:
                yield record_matchup((model_ref, defense_ref, attack_ref), len(data.images), started, "error",
                                     detail=detail)
            return
        played: dict[str, Matchup] = {}
        for index, attack_ref in enumerate(attacks):
            before = [played[ref.key] for ref in self.scenario.cascade_before(index)]
            found = earlier.get(attack_ref.key)
            if found is None:
                todo = clean.copy()
                for m in before:  # an earlier attack that failed to run (or was skipped) breaks nothing
                    if m.robust_correct is not None:
                        todo &= m.robust_correct
                refs = (model_ref, defense_ref, attack_ref)
                if attack_ref.when and not reasons(attack_ref.when, before):
                    found = replace(
                        record_matchup(refs, len(data.images), time.perf_counter(), SKIPPED,
                                       skip_reason(attack_ref.when, before, int(todo.sum())), clean,
                                       attacked_mask=np.zeros_like(todo)),
                        forward_passes=0, backward_passes=0, cascade_after=[m.attack for m in before])
                else:
                    found = self.engine.play(lambda ref=attack_ref: self.attacker(data, model_ref, defense_ref, ref),
                                             target, data, clean, todo, refs, before)
                found = replace(found, key=keys[attack_ref.key])
            played[attack_ref.key] = found
            yield found

    @property
    def engine(self) -> Engine:
        """The per-batch engine that plays this run's matchups."""
        return Engine(self.threat, self.device, self.scenario.batch_size, self.scenario.examples_kept, self.progress,
                      self.scenario.active_samples if self.active else 0, self.scenario.seed)

    @property
    def active(self) -> list[str]:
        """The active tests this run asked for (scenario or command line); none unless asked."""
        return sorted({*self.scenario.active_tests, *self.active_tests})

    def weights_key(self, data: Data, model_ref: ModelRef, defense_ref: DefenseRef) -> tuple[str, dict[str, Any]]:
        """The weights-cache key of a model under a defense entry, and the fields it hashes.

        Only a training-time defense changes the weights, so ``cnn + art.jpeg`` shares the weights of ``cnn + none``.
        """
        training = self._training(defense_ref)
        fields = {
            "model": model_ref.name,
            "model_params": model_ref.params,
            "train": model_ref.train.identity(),
            "defense": [training.name, training.params] if training else None,
            "dataset": [self.scenario.dataset.name, self.scenario.dataset.params],
            "train_data": data.fingerprint(),
            "seed": self.scenario.seed,
            "device": self.device.type,
        }
        model = self._model(model_ref)
        if model.pretrained:
            if model_ref.key not in self._identities:
                self._identities[model_ref.key] = model.identity()
            fields["pretrained"] = self._identities[model_ref.key]
        return content_key(fields), fields

    def _training(self, defense_ref: DefenseRef) -> PluginRef | None:
        """The entry's training-time defense, if any (validation allows at most one)."""
        found = self.registry.training_stages(defense_ref.chain)
        return found[0] if found else None

    def _model(self, model_ref: ModelRef) -> Model:
        """The model plugin of an entry, built once per run (a pretrained one may hash a checkpoint)."""
        if model_ref.key not in self._models:
            self._models[model_ref.key] = self.registry.build("model", model_ref)
        return self._models[model_ref.key]

    def _matchup_key(
        self, data: Data, weights_key: str, model_ref: ModelRef, defense_ref: DefenseRef, attack_ref: AttackRef,
        after: list[str],
    ) -> str:
        """Everything that determines a matchup's result, plugin source included, so a result can be reused.

        Seed and device are covered by the weights key; a transfer attack's source by its own weights key; the
        samples a cascaded attack runs on by the keys of the attacks before it (``after``).
        """
        def plugin(kind: str, ref: PluginRef) -> list[Any]:
            return [ref.name, ref.params, self.registry.get(kind, ref.name).code_hash]

        source = attack_ref.source
        if source is not None:
            source_model, source_defense = self._source(model_ref, attack_ref)
            source = [self.weights_key(data, source_model, source_defense)[0],
                      [plugin("defense", ref) for ref in source_defense.chain]]
        ds = self.scenario.dataset
        runtime = self.runtime.key()
        return content_key({
            "weights": weights_key, "model": plugin("model", model_ref),
            "defense": [plugin("defense", ref) for ref in defense_ref.chain],
            "attack": plugin("attack", attack_ref), "source": source,
            "adaptive": [attack_ref.bpda, attack_ref.eot_samples],
            "threat": [self.threat.norm, self.threat.eps],
            "eval": [ds.name, ds.params, ds.split, ds.samples], "batch_size": self.scenario.batch_size,
            # each batch seeded on its own (``arena.engine``): results of the earlier per-matchup seeding differ
            "seeding": "per-batch",
            **({"after": after} if after else {}),
            # a conditional entry's result also depends on the rules that decide whether it runs
            **({"when": [attack_ref.when, CONDITIONS_CODE]} if attack_ref.when else {}),
            **({"runtime": runtime} if runtime else {}),
            # An active test adds to the matchup's record; asked for, it needs the matchup run again.
            **({"active": [self.active, self.scenario.active_samples]} if self.active else {}),
            # Keeping more examples needs the attack run again; the default stays out, so older keys hold.
            **({"examples": self.scenario.save_examples}
               if self.scenario.save_examples != DEFAULT_EXAMPLES else {}),
        })

    def _source(self, model_ref: ModelRef, attack_ref: AttackRef) -> tuple[ModelRef, DefenseRef]:
        """The model and defense a transfer attack crafts on (the target's own model unless it names another)."""
        source = attack_ref.source
        by_key = {ref.key: ref for ref in self.scenario.models}
        return (by_key[source.model] if source.model else model_ref), source.defense

    def _network(self, data: Data, model_ref: ModelRef, defense_ref: DefenseRef) -> nn.Module:
        """The trained network (no inference-time stages): from memory, the weights cache, or trained and cached."""
        key, fields = self.weights_key(data, model_ref, defense_ref)
        if key in self._networks:
            return self._networks[key]
        training = self._training(defense_ref)
        model_plugin = self._model(model_ref)
        seed_everything(self.scenario.seed)
        net = model_plugin.build(data.dataset.num_classes)
        _check_width(net, data, model_ref)
        label = f"{model_ref.key}+{training.key}" if training else model_ref.key
        if model_plugin.pretrained and training is None:
            self._weights_source[key] = "pretrained"
        elif self.cache.load(key, net):
            self._weights_source[key] = "cache"
            log.info("%s: loaded cached weights %s", label, self.cache.path(key))
        else:
            trainer = Trainer(
                model_ref.train, self.scenario.seed, self.device, data.dataset.num_classes, label, self.progress,
                baseline=lambda: self._network(data, model_ref, NO_DEFENSE),
            )
            train_images, train_labels, _ = data.train()
            if training is None:
                trainer.fit(net, train_images, train_labels)
            else:
                defense = self.registry.build("defense", training)
                seed_everything(self.scenario.seed)
                defense.train(net, train_images, train_labels, trainer)
            self._weights_source[key] = "trained"
            log.info("%s: trained, weights cached at %s", label, self.cache.save(key, net, fields))
        self._networks[key] = net.to(self.device).eval()
        return self._networks[key]

    def _prepared_network(self, data: Data, model_ref: ModelRef, defense_ref: DefenseRef) -> nn.Module:
        """The trained network as the runtime settings run it (compiled once per network, not per matchup)."""
        network = self._network(data, model_ref, defense_ref)
        if id(network) not in self._prepared:  # networks live as long as the arena, so their ids stay theirs
            self._prepared[id(network)] = self.runtime.prepare(network)
        return self._prepared[id(network)]

    def defended(
        self, data: Data, model_ref: ModelRef, defense_ref: DefenseRef, attack_ref: AttackRef | None = None
    ) -> Defended:
        """The defended module of an entry; ``attack_ref`` sets how it is differentiated (BPDA, EOT)."""
        stages = [self.registry.build("defense", ref) for ref in defense_ref.chain]
        adaptive = {"bpda": attack_ref.bpda, "eot_samples": attack_ref.eot_samples} if attack_ref else {}
        return Defended(
            self._prepared_network(data, model_ref, defense_ref),
            pre=[s for s in stages if s.stage == "preprocess"], post=[s for s in stages if s.stage == "postprocess"],
            **adaptive,
        ).to(self.device).eval()

    def attacker(
        self, data: Data, model_ref: ModelRef, defense_ref: DefenseRef, attack_ref: AttackRef
    ) -> tuple[Attack, Counted, dict[str, Any]]:
        """The attack built on the module it differentiates (the target, or a transfer attack's source) with its
        passes counted, seeded for this matchup, and a record of how it gets its gradients."""
        if attack_ref.source is None:
            crafted_on = self.defended(data, model_ref, defense_ref, attack_ref)
            gradient = crafted_on.gradient()
        else:
            source_model, source_defense = self._source(model_ref, attack_ref)
            crafted_on = self.defended(data, source_model, source_defense, attack_ref)
            gradient = {**crafted_on.gradient(), "source": f"{source_model.key}+{source_defense.key}"}
        if self.registry.get("attack", attack_ref.name).cls.gradient_free:
            gradient["gradient_free"] = True
        seed_everything(derive_seed(self.scenario.seed, model_ref.key, defense_ref.key, attack_ref.key))
        counted = Counted(crafted_on, autocast=self.runtime.autocast).eval()
        return self.registry.build("attack", attack_ref, counted, self.threat), counted, gradient


def _check_width(net: nn.Module, data: Data, model_ref: ModelRef) -> None:
    """A model must output one logit per class of the data set (the seed's CNN emitted 64 for 10 classes)."""
    with torch.no_grad():
        width = net.eval()(data.images[:2]).shape[-1]
    classes = data.dataset.num_classes
    if width != classes:
        raise PluginError(f"model {model_ref.name!r} outputs {width} logits per image but {data.dataset.name} has "
                          f"{classes} classes; its last layer must have num_classes ({classes}) outputs")


def describe(m: Matchup) -> str:
    """One log line for a finished matchup."""
    head = f"{m.attack} vs {m.model}+{m.defense}: "
    if m.status == "ok":
        origin = f"reused from run {m.reused_from}" if m.reused_from else f"{m.wall_time_s:.1f} s"
        if m.passes_per_sample is not None and not m.reused_from:
            origin += f", {m.passes_per_sample:.1f} passes/sample"
        numbers = f"clean {m.clean_accuracy:.1%}, robust {m.robust_accuracy:.1%}"
        return head + f"{numbers} ({describe_gradient(m.gradient)}; {origin})"
    return head + f"{m.status.upper()}: {(m.detail or '').strip().splitlines()[-1]}"
