"""``arena verify``: anyone can check a standing-board entry. K seeded-random samples of every matchup behind its
number are replayed on this machine from the runs' recorded provenance (scenario text, plugin code hashes inside the
matchup keys, weights key, data fingerprint, seed, runtime settings) and compared per sample.

Every batch of an attack is seeded on its own (``arena.engine``), so replaying only the batches that hold the chosen
samples gives what the full run gave. Externally submitted examples (``arena submit-examples``) cannot be replayed;
their kept images are audited and classified again instead. A missing ingredient (plugin, weights, data, another
code hash) is an ``ArenaError`` naming it, before anything is compared.
"""

from __future__ import annotations

import secrets
import socket
import uuid
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from arena.active import ACTIVE_TESTS
from arena.audit import audit
from arena.data import Data
from arena.defended import Defended
from arena.engine import predict
from arena.errors import ArenaError
from arena.matchups import Arena
from arena.records import Matchup, Run, Status, Verification
from arena.registry import Registry, load_registry, unknown_name_message
from arena.runtime import Runtime
from arena.scenario import AttackRef, DefenseRef, ModelRef, Scenario, ScenarioError, parse_scenario
from arena.standing import Entry, Threat, data_label, entry_identity, eps_text, standing
from arena.store import Store
from arena.training import WeightsCache, fingerprint
from arena.version import __version__

#: Samples replayed per matchup unless ``--samples`` says otherwise.
DEFAULT_SAMPLES = 100


class MissingIngredient(ArenaError):
    """Something a run recorded that this machine lacks (plugin, weights, data, the same code); names it."""


def find_entry(board: dict[Threat, list[Entry]], name: str) -> Entry:
    """The measured entry ``name`` names: ``MODEL+DEFENSE`` as the board shows it, optionally ``@Q`` where Q is a
    prefix of its identity or sample set, or its ε (``8/255``), to tell apart entries of the same label."""
    label, _, qualifier = name.partition("@")
    measured = [e for entries in board.values() for e in entries if e.kind == "measured"]
    found = [e for e in measured if e.name == label and (
        not qualifier or e.identity.startswith(qualifier) or e.sample_set.startswith(qualifier)
        or eps_text(e.threat.eps) == qualifier)]
    if not found:
        raise ArenaError(unknown_name_message("entry", name, sorted({e.name for e in measured})))
    if len(found) > 1:
        choices = "; ".join(f"{e.name}@{e.identity[:10]} ({e.threat}, {data_label(e.sample_set)})" for e in found)
        raise ArenaError(f"entry {name!r} names {len(found)} entries; pass one of: {choices}")
    return found[0]


def behind(store: Store, entry: Entry) -> list[tuple[Run, Matchup]]:
    """The valid matchups behind an entry's number, with their runs."""
    found = []
    for source in entry.sources:
        run = store.run(source.run)
        found += [(run, m) for m in store.matchups(run.id) if m.status == Status.OK and m.robust_correct is not None
                  and entry_identity(run, m)[0] == entry.identity]
    return found


class _CachedOnly(WeightsCache):
    """A weights cache that never trains: a key it lacks is a missing ingredient."""

    def load(self, key: str, model: torch.nn.Module) -> bool:
        if super().load(key, model):
            return True
        raise MissingIngredient(f"weights {key} are not in the weights cache {self.root}: copy {key}.pt there from "
                                "the cache of the machine that played the run, or pass --train to train them here")


def _plugin_names(m: Matchup) -> list[tuple[str, str]]:
    """The (kind, plugin) pairs a stored matchup used."""
    params = m.params
    names = [("model", params.get("model", {}).get("plugin"))]
    if not m.gradient.get("external"):  # an external attack is images, not a plugin
        names.append(("attack", params.get("attack", {}).get("plugin")))
    names += [("defense", d.get("plugin")) for d in params.get("defense", [])]
    return [(kind, name) for kind, name in names if name]


@dataclass
class Rebuilt:
    """A run rebuilt on this machine from what it recorded: its scenario, plugins, evaluation data and arena."""

    run: Run
    scenario: Scenario
    registry: Registry
    arena: Arena
    data: Data

    @classmethod
    def of(cls, run: Run, matchups: list[Matchup], device: torch.device | None = None, cache: Path | None = None,
           plugins: tuple[str, ...] = (), train: bool = False) -> Rebuilt:
        """Rebuild ``run``; refuses (``MissingIngredient``) a plugin, device or data set it lacks. Only installed
        plugins and the ``plugins`` modules are loaded, never a file the store names, and the data is read from this
        machine's data folder (``ARENA_DATA_DIR``), not from a folder the stored scenario names."""
        registry = load_registry(modules=plugins)
        for m in matchups:
            for kind, name in _plugin_names(m):
                if name not in registry.names(kind):
                    raise MissingIngredient(f"the {kind} plugin {name!r} that run {run.id} used is not installed "
                                            "here; install it (or pass -p MODULE) and verify again")
        try:
            scenario = parse_scenario(run.scenario_text, run.scenario_path, registry)
        except ScenarioError as exc:
            lines = [line.strip() for line in str(exc).splitlines()]
            raise MissingIngredient(f"run {run.id}'s scenario does not load here: {'; '.join(lines[1:] or lines)}"
                                    ) from None
        scenario = scenario.model_copy(update={"dataset": scenario.dataset.model_copy(update={"data_dir": None})})
        if device is None:
            device = torch.device(run.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise MissingIngredient(f"run {run.id} played on cuda and this machine has no CUDA GPU; verify on one "
                                    "(its weights key and results are tied to the device type)")
        known = {f.name for f in fields(Runtime)}
        arena = Arena(scenario, registry, Path(run.origin or "."), device,
                      WeightsCache(cache) if train else _CachedOnly(cache), progress=False, threat=run.threat,
                      runtime=Runtime(**{k: v for k, v in run.runtime.items() if k in known}))
        data = Data.load(scenario, registry)
        here = fingerprint(data.images, data.labels)
        if run.data_fingerprint and here != run.data_fingerprint:
            raise MissingIngredient(f"the evaluation images here are not run {run.id}'s (data fingerprint "
                                    f"{here[:10]} here, {run.data_fingerprint[:10]} there); point ARENA_DATA_DIR at "
                                    "the data set the run used")
        return cls(run, scenario, registry, arena, data)

    def refs(self, m: Matchup) -> tuple[ModelRef, DefenseRef, AttackRef | None]:
        """The scenario's references of a stored matchup (no attack for an external one)."""
        model = next((r for r in self.scenario.models if r.key == m.model), None)
        defense = next((r for r in self.scenario.defenses if r.key == m.defense), None)
        attack = next((r for r in self.scenario.attacks if r.key == m.attack), None)
        if model is None or defense is None or (attack is None and not m.gradient.get("external")):
            raise MissingIngredient(f"{m.attack} vs {m.model}+{m.defense}: not in run {self.run.id}'s scenario; the "
                                    "store was altered, so it cannot be replayed")
        return model, defense, attack

    def check_weights(self, m: Matchup) -> str:
        """The entry's weights key, refused when it is not the one the run recorded."""
        model, defense, _ = self.refs(m)
        here = self.arena.networks.weights_key(self.data, model, defense)[0]
        recorded = self.run.weights.get(f"{m.model}/{m.defense}", {}).get("key")
        if recorded and here != recorded:
            raise MissingIngredient(f"{m.model}+{m.defense}: the weights key here ({here[:10]}) is not run "
                                    f"{self.run.id}'s ({recorded[:10]}): the training data, the model's settings or "
                                    "the device type differ")
        return here

    def check_key(self, m: Matchup) -> None:
        """Refuse a matchup whose key here differs from the stored one (another plugin code hash or arena)."""
        model, defense, _ = self.refs(m)
        for active in ((), ACTIVE_TESTS):  # ``--active-tests`` is not in the scenario, but is in the key
            self.arena.active_tests = active
            if self.arena.matchup_keys(self.data, model, defense).get(m.attack) == m.key:
                return
        names = ", ".join(f"{kind} {name}" for kind, name in _plugin_names(m))
        raise MissingIngredient(f"{m.attack} vs {m.model}+{m.defense}: its matchup key here is not run "
                                f"{self.run.id}'s: the code of a plugin it uses ({names}) or of arena (run: "
                                f"{self.run.arena_version}, here: {__version__}) differs; install what the run used")

    def clean(self, model: ModelRef, defense: DefenseRef) -> tuple[Defended, np.ndarray]:
        """The defended model and which samples it classifies right, seeded as the run seeded them."""
        target = self.arena.networks.defended(self.data, model, defense)
        return target, self.arena.clean(self.data, model, defense, target)


def _replay(rebuilt: Rebuilt, store: Store, m: Matchup, target: Defended, clean: np.ndarray,
            chosen: np.ndarray) -> tuple[np.ndarray, str | None]:
    """The matchup's per-sample robustness on the chosen samples, replayed here (re-checked for an external one),
    and why the replay itself failed the threat model, if it did."""
    model, defense, attack = rebuilt.refs(m)
    if m.gradient.get("external"):
        return _recheck(rebuilt, store, m, target, clean, chosen)
    assert attack is not None, "refs names the attack of every matchup but an external one"
    arena = rebuilt.arena
    engine = replace(arena.engine, only=chosen)
    played = engine.play(lambda: arena.attacker(rebuilt.data, model, defense, attack), target, rebuilt.data, clean,
                         m.ran_on.copy(), (model, defense, attack), [])
    if played.status == Status.ERROR:
        raise ArenaError(f"replaying {m.attack} vs {m.model}+{m.defense} failed here: "
                         f"{(played.detail or '').strip().splitlines()[-1]}")
    if played.status == Status.INVALID:
        return np.zeros_like(clean), played.detail
    return played.robust, None


def _recheck(rebuilt: Rebuilt, store: Store, m: Matchup, target: torch.nn.Module, clean: np.ndarray,
             chosen: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An external attack's kept images, audited against the clean images here and classified again."""
    robust = clean.copy()
    kept = [e for e in store.examples(m) if chosen[e.sample]]
    if not kept:
        return robust, None
    index = torch.tensor([e.sample for e in kept])
    images, labels = (t[index.to(rebuilt.arena.device)] for t in rebuilt.data.on(rebuilt.arena.device))
    adversarial = torch.from_numpy(np.stack([e.adversarial for e in kept])).to(rebuilt.arena.device)
    report = audit(m.attack, images, adversarial, rebuilt.run.threat)
    if report.violation:
        return np.zeros_like(clean), report.violation
    right = predict(target, adversarial, rebuilt.scenario.batch_size, rebuilt.arena.device) == labels.cpu()
    robust[index.numpy()] &= right.numpy()
    return robust, None


def _state(value: bool) -> str:
    return "robust" if value else "broken"


def _right(value: bool) -> str:
    return "right" if value else "wrong"


def verify(results: Path, name: str, samples: int = DEFAULT_SAMPLES, seed: int | None = None,
           device: torch.device | None = None, cache: Path | None = None, plugins: tuple[str, ...] = (),
           train: bool = False) -> Verification:
    """Replay ``samples`` seeded-random samples of every matchup behind the entry ``name`` of the store at
    ``results``, compare them per sample with what is stored, and store the mark (verified or not reproducible)."""
    Store.open_existing(results).close()  # refuses a folder without a store, rather than making one
    with Store(results) as store:
        entry = find_entry(standing([store]), name)
        pairs = behind(store, entry)
        seed = secrets.randbelow(2**31) if seed is None else seed
        rng = np.random.default_rng(seed)
        chosen_ids = np.sort(rng.choice(entry.samples, size=min(samples, entry.samples), replace=False))
        chosen = np.zeros(entry.samples, dtype=bool)
        chosen[chosen_ids] = True
        by_key: dict[str, list[tuple[Run, Matchup]]] = {}
        for run, m in pairs:
            by_key.setdefault(m.key or f"{run.id}/{m.attack}", []).append((run, m))
        rebuilt: dict[str, Rebuilt] = {}
        firsts = [group[0] for group in by_key.values()]
        for run, m in firsts:  # every ingredient is checked before anything is replayed
            if run.id not in rebuilt:
                rebuilt[run.id] = Rebuilt.of(run, [m for r, m in pairs if r.id == run.id], device, cache, plugins,
                                             train)
            rebuilt[run.id].check_weights(m)
            if not m.gradient.get("external"):
                rebuilt[run.id].check_key(m)
        differing: list[str] = []
        targets: dict[tuple[str, str, str], tuple[Defended, np.ndarray]] = {}
        for group in by_key.values():
            run, m = group[0]
            here = rebuilt[run.id]
            pair = (run.id, m.model, m.defense)
            if pair not in targets:
                targets[pair] = here.clean(*here.refs(m)[:2])
            target, clean = targets[pair]
            robust, violation = _replay(here, store, m, target, clean, chosen)
            for copy_run, copy in group:
                where = f"{copy.attack} (run {copy_run.id})"
                if violation:
                    differing.append(f"{where}: the replay broke the threat model ({violation})")
                    continue
                for s in chosen_ids:
                    if copy.clean[s] != clean[s]:
                        differing.append(f"sample {s}: {where} recorded it {_right(copy.clean[s])} clean, "
                                         f"replayed {_right(clean[s])}")
                    elif copy.robust[s] != robust[s]:
                        differing.append(f"sample {s}: {where} recorded {_state(copy.robust[s])}, "
                                         f"replayed {_state(robust[s])}")
        device_type = next(iter(rebuilt.values())).arena.device.type if rebuilt else "cpu"
        mark = Verification(
            id=uuid.uuid4().hex, entry=entry.name, identity=entry.identity, sample_set=entry.sample_set,
            dataset=entry.threat.dataset, norm=entry.threat.norm, eps=entry.threat.eps,
            status="not reproducible" if differing else "verified", samples=[int(s) for s in chosen_ids],
            keys=sorted(by_key), differing=differing, seed=seed, machine=socket.gethostname(), device=device_type,
            arena_version=__version__, verified_at=datetime.now(UTC).isoformat(timespec="seconds"))
        store.add_verification(mark)
        return mark
