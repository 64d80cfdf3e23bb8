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
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from arena.conditions import reasons, skip_reason
from arena.cost import Counted
from arena.data import Data
from arena.defended import describe_gradient
from arena.engine import Engine, predict, record_matchup
from arena.errors import ArenaError
from arena.executors import Executor, LocalExecutor
from arena.keys import derive_seed, matchup_key
from arena.kinds import Attack
from arena.leaderboard import Row, board, write_summary
from arena.model_checks import ModelChecks
from arena.networks import Networks
from arena.records import GradientPath, Matchup, Status
from arena.registry import Registry
from arena.report import write_report
from arena.runtime import Runtime
from arena.schema import AttackRef, DefenseRef, ModelRef, Scenario
from arena.store import Store
from arena.threat import ThreatModel
from arena.training import WeightsCache, fingerprint, seed_everything

log = logging.getLogger(__name__)

#: The opt-in reporters and the module each needs.
REPORTERS = {"mlflow": "mlflow"}


@dataclass
class Shared:
    """What the runs of one scenario share (``run_scenario`` plays one per ε of a sweep): its data, its networks, the
    model-level checks and each pair's clean predictions, so every model × defense is loaded, built, checked and
    predicted once, however many ε it is attacked at."""

    data: Data | None = None
    networks: Networks | None = None
    checked: ModelChecks = field(default_factory=ModelChecks)
    #: Each model × defense's per-sample clean correctness (the threat model plays no part in it).
    clean: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)


def require_reporters(names: list[str]) -> None:
    """Refuse, before any work, a reporter whose package is not installed."""
    for name in names:
        if importlib.util.find_spec(REPORTERS[name]) is None:
            raise ArenaError(f"report_to {name}: the {REPORTERS[name]} package is not installed; pip install "
                             f"'arena[{name}]' (or drop {name} from report_to / --report-to)")


@dataclass
class Arena:
    """Plays one scenario into the store of a results folder; built by ``arena run`` or by Python code and tests."""

    scenario: Scenario
    registry: Registry
    results_dir: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    cache: WeightsCache = field(default_factory=WeightsCache)
    progress: bool = True
    #: The run's overall progress bar (``arena.progress``), advanced once per finished matchup; it may span several
    #: arenas, one per ε of a sweep.
    bar: tqdm | None = None
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
    #: The data, networks, model-level checks and clean predictions, shared with the other runs of a sweep.
    shared: Shared = field(default_factory=Shared, repr=False)
    #: The run's networks: built, trained or loaded from the weights cache, once per weights key.
    networks: Networks = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.shared.networks is None:
            self.shared.networks = Networks(self.scenario, self.registry, self.device, self.cache, self.runtime,
                                            self.progress)
        self.networks = self.shared.networks

    def play(self, executor: Executor | None = None) -> str:
        """Run every matchup and return the run id; the store is opened only once the data has loaded. The
        ``executor`` plays the model × defense pairs (in this process by default; ``arena.executors.RayExecutor``
        spreads them over a Ray cluster); this process alone writes the store, one matchup per transaction."""
        self.threat = self.threat or self.scenario.threat
        report_to = sorted({*self.scenario.report_to, *self.report_to})
        require_reporters(report_to)
        seed_everything(self.scenario.seed)
        if self.shared.data is None:
            self.shared.data = Data.load(self.scenario, self.registry)
        data = self.shared.data
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
                if self.bar is not None:
                    self.bar.update()
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
        assert self.threat is not None, "the run's threat model is set before any matchup is keyed"
        weights_key = self.networks.weights_key(data, model_ref, defense_ref)[0]
        keys: dict[str, str] = {}
        for index, attack_ref in enumerate(self.scenario.attacks):
            after = [keys[ref.key] for ref in self.scenario.cascade_before(index)]
            source = None
            if attack_ref.source is not None:
                source_model, source_defense = self.networks.transfer_source(model_ref, attack_ref)
                source = (self.networks.weights_key(data, source_model, source_defense)[0], source_defense)
            keys[attack_ref.key] = matchup_key(self.scenario, self.registry, self.threat, self.runtime, self.active,
                                               weights_key, (model_ref, defense_ref, attack_ref), source, after)
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
        suites = {ref.key: ref.suite for ref in self.scenario.attacks}  # a reused result named as this run names it
        return keys, {name: replace(m, model=model_ref.key, defense=defense_ref.key, attack=name, suite=suites[name])
                      for name, m in found.items() if m is not None}

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
            weights_key = self.networks.weights_key(data, model_ref, defense_ref)[0]
            keys = keys or self.matchup_keys(data, model_ref, defense_ref)
            if not all(a.key in earlier for a in attacks):
                target = self.networks.defended(data, model_ref, defense_ref)
                clean = self.clean(data, model_ref, defense_ref, target)
            self.weights[f"{model_ref.key}/{defense_ref.key}"] = {
                "key": weights_key, "source": self.networks.provenance.get(weights_key, "unused"),
            }
        except Exception:
            detail = traceback.format_exc()
            log.error("preparing %s + %s failed:\n%s", model_ref.key, defense_ref.key, detail)
            for attack_ref in attacks:
                yield record_matchup((model_ref, defense_ref, attack_ref), len(data.images), started, Status.ERROR,
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
                        record_matchup(refs, len(data.images), time.perf_counter(), Status.SKIPPED,
                                       skip_reason(attack_ref.when, before, int(todo.sum())), clean,
                                       attacked_mask=np.zeros_like(todo)),
                        forward_passes=0, backward_passes=0, cascade_after=[m.attack for m in before])
                else:
                    found = self.engine.play(partial(self.attacker, data, model_ref, defense_ref, attack_ref),
                                             target, data, clean, todo, refs, before)
                found = replace(found, key=keys[attack_ref.key])
            played[attack_ref.key] = found
            yield found

    def clean(self, data: Data, model_ref: ModelRef, defense_ref: DefenseRef, target: nn.Module) -> np.ndarray:
        """Which evaluation samples the defended model classifies right, predicted once per sweep."""
        pair = (model_ref.key, defense_ref.key)
        if pair not in self.shared.clean:
            seed_everything(derive_seed(self.scenario.seed, model_ref.key, defense_ref.key))
            images = data.on(self.device)[0]
            self.shared.clean[pair] = (predict(target, images, self.scenario.batch_size, self.device)
                                       == data.labels).numpy()
        return self.shared.clean[pair]

    @property
    def engine(self) -> Engine:
        """The per-batch engine that plays this run's matchups."""
        assert self.threat is not None, "a run's threat model is set when it starts"
        return Engine(self.threat, self.device, self.scenario.batch_size, self.scenario.examples_kept, self.progress,
                      self.scenario.active_samples if self.active else 0, self.shared.checked, self.scenario.seed)

    @property
    def active(self) -> list[str]:
        """The active tests this run asked for (scenario or command line); none unless asked."""
        return sorted({*self.scenario.active_tests, *self.active_tests})

    def attacker(
        self, data: Data, model_ref: ModelRef, defense_ref: DefenseRef, attack_ref: AttackRef
    ) -> tuple[Attack, Counted, GradientPath]:
        """The attack built on the module it differentiates (the target, or a transfer attack's source) with its
        passes counted, seeded for this matchup, and a record of how it gets its gradients."""
        if attack_ref.source is None:
            crafted_on = self.networks.defended(data, model_ref, defense_ref, attack_ref)
            gradient = crafted_on.gradient()
        else:
            source_model, source_defense = self.networks.transfer_source(model_ref, attack_ref)
            crafted_on = self.networks.defended(data, source_model, source_defense, attack_ref)
            gradient = crafted_on.gradient()
            gradient["source"] = f"{source_model.key}+{source_defense.key}"
        if cast(type[Attack], self.registry.get("attack", attack_ref.name).cls).gradient_free:
            gradient["gradient_free"] = True
        seed_everything(derive_seed(self.scenario.seed, model_ref.key, defense_ref.key, attack_ref.key))
        counted = Counted(crafted_on, autocast=self.runtime.autocast).eval()
        return self.registry.build(Attack, attack_ref, counted, self.threat), counted, gradient


def describe(m: Matchup) -> str:
    """One log line for a finished matchup."""
    head = f"{m.attack} vs {m.model}+{m.defense}: "
    if m.status == Status.OK:
        origin = f"reused from run {m.reused_from}" if m.reused_from else f"{m.wall_time_s:.1f} s"
        if m.passes_per_sample is not None and not m.reused_from:
            origin += f", {m.passes_per_sample:.1f} passes/sample"
        numbers = f"clean {m.clean_accuracy:.1%}, robust {m.robust_accuracy:.1%}"
        return head + f"{numbers} ({describe_gradient(m.gradient)}; {origin})"
    return head + f"{m.status.upper()}: {(m.detail or '').strip().splitlines()[-1]}"
