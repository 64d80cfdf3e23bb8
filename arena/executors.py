"""Executors play a run's model × defense pairs: ``LocalExecutor`` one after the other in this process (the
default); ``RayExecutor`` spreads them over a Ray cluster: a local one for free (``ray.init()``), or one started with
``ray start --head``.

The work graph: first every set of weights the run needs is trained (undefended models first, since a defense such
as static FGSM augmentation crafts on its undefended baseline), then every model × defense pair plays its attack
list; a pair is one task, so its cascade and its defended model stay together. Tasks run on a pool of workers (Ray
actors), each with the scenario, its plugins and the data loaded once and one torch thread (``num_cpus=1``;
``num_gpus`` a fraction, so several small CIFAR models share a GPU).

Weights travel through the weights cache folder, not Ray's object store: the cache is already where every run
looks first, its writes are atomic even with concurrent writers, and it outlives the job, so a driver killed and
started again resumes without retraining. On a cluster it must be a folder all nodes share (``--cache-dir``).

Only the driver writes the results store, one transaction per matchup, as results arrive. A worker that dies is
restarted and its task retried (``max_restarts``, ``max_task_retries``); since rows are written only by the driver,
a retried task never leaves a duplicate row. Each matchup's seed is derived from the scenario seed and its names,
so a run gives the same per-sample results on one process or many.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from arena.data import Data
from arena.errors import ArenaError
from arena.networks import Networks
from arena.records import Matchup
from arena.registry import load_registry
from arena.runtime import Runtime
from arena.schema import DATA_ENV, DefenseRef, ModelRef, Scenario
from arena.threat import ThreatModel
from arena.training import WeightsCache
from arena.validation import parse_scenario

log = logging.getLogger(__name__)

Pairs = list[tuple[ModelRef, DefenseRef]]
#: A pair to play: its model and defense, its matchup keys, and the matchups the store already holds for them.
Job = tuple[ModelRef, DefenseRef, dict[str, str], dict[str, Matchup]]


class Tournament(Protocol):
    """What an executor uses of a run (``arena.matchups.Arena``): its settings, its networks, and two calls."""

    scenario: Scenario
    device: torch.device
    cache: WeightsCache
    runtime: Runtime
    threat: ThreatModel | None
    progress: bool
    networks: Networks
    weights: dict[str, dict[str, str]]

    def prepare(
        self, data: Data, model_ref: ModelRef, defense_ref: DefenseRef
    ) -> tuple[dict[str, str], dict[str, Matchup]]: ...

    def play_pair(
        self, data: Data, model_ref: ModelRef, defense_ref: DefenseRef, keys: dict[str, str],
        earlier: dict[str, Matchup],
    ) -> Iterator[Matchup]: ...


class Executor(Protocol):
    """Plays a run's model × defense pairs and yields their matchups as they finish, in any order."""

    def play(self, arena: Tournament, data: Data, pairs: Pairs) -> Iterator[Matchup]: ...


class LocalExecutor:
    """Plays the pairs one after the other in this process: the default."""

    def play(self, arena: Tournament, data: Data, pairs: Pairs) -> Iterator[Matchup]:
        for model_ref, defense_ref in pairs:
            yield from arena.play_pair(data, model_ref, defense_ref, *arena.prepare(data, model_ref, defense_ref))


INSTALL = "pip install -e '.[ray]' in a checkout, or pip install 'ray>=2.9'"


def require_ray() -> None:
    """Refuse ``--executor ray`` before any work when Ray is not installed, naming the install command."""
    if importlib.util.find_spec("ray") is None:
        raise ArenaError(f"--executor ray needs Ray, which is not installed here: {INSTALL}")


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to rebuild the driver's arena: the scenario as text, the plugins to load (absolute
    paths or import paths), the threat model, device, weights cache and torch threads."""

    scenario_text: str
    scenario_path: str
    plugins: tuple[str, ...]
    blocked: tuple[str, ...]
    threat: ThreatModel | None
    device: str
    cache: str
    data_dir: str
    #: The training data's content hash: a worker reads the training images only if it must train.
    fingerprint: str
    threads: int = 1
    runtime: Runtime = field(default_factory=Runtime)


class Worker:
    """One Ray actor: the scenario, its plugins and its data, loaded once; trains weights and plays pairs. It builds
    an arena of the driver's class (``kind``), so it plays pairs exactly as the driver would."""

    def __init__(self, spec: WorkerSpec, kind: Callable[..., Tournament]) -> None:
        torch.set_num_threads(spec.threads)
        os.environ[DATA_ENV] = spec.data_dir  # the driver's data folder (a scenario's own data_dir still wins)
        registry = load_registry(modules=spec.plugins, blocked=spec.blocked)
        scenario = parse_scenario(spec.scenario_text, spec.scenario_path, registry)
        device = torch.device("cuda" if spec.device == "auto" and torch.cuda.is_available() else
                              "cpu" if spec.device == "auto" else spec.device)
        self.arena = kind(scenario, registry, Path("."), device, WeightsCache(Path(spec.cache)), progress=False,
                           threat=spec.threat, runtime=spec.runtime)
        self.data = Data.load(scenario, registry)
        self.data.known_fingerprint = spec.fingerprint

    def _refs(self, model: str, defense: str) -> tuple[ModelRef, DefenseRef]:
        scenario = self.arena.scenario
        return (next(m for m in scenario.models if m.key == model),
                next(d for d in (*scenario.defenses, *_sources(scenario)) if d.key == defense))

    def train(self, model: str, defense: str) -> None:
        """Make sure these weights are in the cache (trained here if not)."""
        model_ref, defense_ref = self._refs(model, defense)
        self.arena.networks.network(self.data, model_ref, defense_ref)

    def play_pair(self, model: str, defense: str, keys: dict[str, str],
                  earlier: dict[str, Matchup]) -> tuple[list[Matchup], dict[str, Any]]:
        """The pair's matchups (``earlier`` ones as they are) and where its weights came from."""
        model_ref, defense_ref = self._refs(model, defense)
        matchups = list(self.arena.play_pair(self.data, model_ref, defense_ref, keys, earlier))
        return matchups, self.arena.weights.get(f"{model}/{defense}", {})


def _sources(scenario: Any) -> list[DefenseRef]:
    return [a.source.defense for a in scenario.attacks if a.source is not None]


@dataclass
class RayExecutor:
    """Plays a run's pairs on ``workers`` Ray actors; ``address`` joins a running cluster (else a local one is
    started with ``workers`` CPUs); ``gpus_per_worker`` is each actor's share of a GPU."""

    plugins: tuple[str, ...] = ()
    blocked: tuple[str, ...] = ()
    workers: int = 2
    address: str | None = None
    gpus_per_worker: float = 0.0
    threads: int = 1
    #: Whether this executor started the (local) cluster, and so shuts it down when the run ends.
    _started: bool = field(default=False, init=False, repr=False)

    def play(self, arena: Tournament, data: Data, pairs: Pairs) -> Iterator[Matchup]:
        require_ray()
        import ray
        from ray.util import ActorPool

        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False)
            self._started = True
        try:
            spec = WorkerSpec(arena.scenario.text, str(Path(arena.scenario.path).resolve()), self.plugins,
                              self.blocked, arena.threat, str(arena.device), str(arena.cache.root.resolve()),
                              str(arena.scenario.data_dir()), data.fingerprint(), self.threads, arena.runtime)
            actor = ray.remote(num_cpus=1, num_gpus=self.gpus_per_worker, max_restarts=2,
                               max_task_retries=2)(Worker)
            pool = ActorPool([actor.remote(spec, type(arena)) for _ in range(self.workers)])
            try:
                yield from self._run(arena, data, pairs, pool)
            except ray.exceptions.RayError as exc:
                last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                raise ArenaError(f"a Ray worker could not do its work ({last}); every matchup finished before is "
                                 "kept; check that every node has the data, the cache folder and the plugins' "
                                 "packages, then run the same command again to resume") from None
        finally:
            if self._started:
                ray.shutdown()
                self._started = False

    def _run(self, arena: Tournament, data: Data, pairs: Pairs, pool: Any) -> Iterator[Matchup]:
        jobs: list[Job] = []
        done: list[Job] = []
        for model_ref, defense_ref in pairs:
            keys, earlier = arena.prepare(data, model_ref, defense_ref)
            # all reused, or not even keyable (play_pair records why): no worker needed
            (done if len(earlier) == len(keys) else jobs).append((model_ref, defense_ref, keys, earlier))
        for model_ref, defense_ref, keys, earlier in done:
            yield from arena.play_pair(data, model_ref, defense_ref, keys, earlier)
        self._train(arena, data, jobs, pool)
        work = [(m.key, d.key, keys, earlier) for m, d, keys, earlier in jobs]  # the run's one bar counts them
        for matchups, weights in pool.map_unordered(lambda a, job: a.play_pair.remote(*job), work):
            arena.weights[f"{matchups[0].model}/{matchups[0].defense}"] = weights
            yield from matchups

    def _train(self, arena: Tournament, data: Data, jobs: list[Job], pool: Any) -> None:
        """Train every set of weights the jobs need, each once: undefended ones first, then defended ones."""
        networks = arena.networks
        needed: dict[str, tuple[str, str, bool]] = {}
        for model_ref, defense_ref, _, _ in jobs:
            entries = [(model_ref, defense_ref)]
            entries += [networks.transfer_source(model_ref, a) for a in arena.scenario.attacks if a.source is not None]
            for m, d in entries:
                key = networks.weights_key(data, m, d)[0]
                needed.setdefault(key, (m.key, d.key, networks.training(d) is None))
        for undefended in (True, False):
            work = [(m, d) for m, d, plain in needed.values() if plain == undefended]
            for _ in pool.map_unordered(lambda a, job: a.train.remote(*job), work):
                pass
