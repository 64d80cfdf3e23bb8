"""The standing leaderboard: one table per threat model over every run of one or more results stores.

An entry is a model × defense identified by its weights key (which hashes the checkpoint of a pretrained model) and
its defense chain, not by its label; its number is the best known worst case: per sample, the worst over every valid
attack of every run on the same images. Runs on other images form separate entries, ranked within their own sample
set. A matchup key whose per-sample results differ between runs is a reproducibility failure and is flagged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arena.formats import Table
from arena.leaderboard import board, total_passes
from arena.records import Matchup, Run, Status, Verification
from arena.store import Store
from arena.threat import eps_text


@dataclass(frozen=True, order=True)
class Threat:
    """A threat model as the board groups entries: data set, norm and ε (rounded so 8/255 from any source matches)."""

    dataset: str
    norm: str
    eps: float

    @classmethod
    def of(cls, dataset: str, norm: str, eps: float) -> Threat:
        return cls(dataset.lower(), norm.lower(), round(float(eps), 7))

    def __str__(self) -> str:
        return f"{self.dataset} {self.norm} ε={eps_text(self.eps)}"


@dataclass
class Source:
    """Where one run's part of an entry's number came from: the provenance of that part."""

    run: str
    results: str
    scenario: str
    scenario_digest: str
    arena_version: str
    weights_key: str | None
    data_fingerprint: str | None
    seed: int
    device: str
    precision: str
    started_at: str
    status: str
    attacks: list[str]
    suites: list[str]
    passes_per_sample: float | None
    #: Where the run got the weights: ``trained``, ``cache``, ``pretrained`` (a checkpoint from elsewhere).
    weights_source: str | None = None
    report: str | None = None


@dataclass
class Entry:
    """One row of a threat model's table: a measured model × defense on one sample set, or a reported row."""

    threat: Threat
    model: str
    defense: str
    kind: str = "measured"
    identity: str = ""
    samples: int = 0
    sample_set: str = ""
    clean_accuracy: float | None = None
    worst_case: float | None = None
    #: The fewest (attack, run) pairs whose per-sample union breaks every sample the best known worst case breaks.
    achieved_by: list[str] = field(default_factory=list)
    attacks: int = 0
    #: Each suite's worst case per sample over every run of it (e.g. ``autoattack``), for RobustBench's column.
    suites: dict[str, float] = field(default_factory=dict)
    passes: float | None = None
    rank: int | None = None
    #: False when the entry is ranked on other images than the sample set most of its threat model's entries share.
    main_set: bool = True
    flags: list[str] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    #: For a reported row: the fields it was read with (RobustBench's model-info, the file it came from).
    reported: dict[str, Any] = field(default_factory=dict)
    #: The keys of the valid matchups behind the number (what ``arena verify`` replays).
    keys: list[str] = field(default_factory=list)
    #: ``verified (K/K, machine, date)``, ``not reproducible (…)`` or ``unverified``: the latest ``arena verify``
    #: mark that covers every matchup behind the number.
    verification: str = "unverified"
    #: The attacks submitted from outside the arena (``arena submit-examples``) that count in the number.
    external: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The entry as commands take it (``arena verify MODEL+DEFENSE``)."""
        return f"{self.model}+{self.defense}"

    @property
    def runs(self) -> list[str]:
        return [s.run for s in self.sources]


@dataclass
class _Part:
    """The matchups one run contributes to an entry."""

    store: Store
    run: Run
    matchups: list[Matchup]
    flags: list[str]


def entry_identity(run: Run, m: Matchup) -> tuple[str, str | None]:
    """An entry's identity (its weights key with the hash of its defense chain) and the weights key alone."""
    key = run.weights.get(f"{m.model}/{m.defense}", {}).get("key")
    if key is None:
        return f"label {m.model}/{m.defense} of run {run.id}", None
    chain = json.dumps(m.params.get("defense", []), sort_keys=True, default=str)
    return f"{key}:{hashlib.sha256(chain.encode()).hexdigest()[:12]}", key


def sample_set(run: Run) -> str:
    """The images a run evaluated: their content hash, or for a store older than schema 6 its data set and count."""
    return run.data_fingerprint or f"{run.dataset}, first {run.samples} (no fingerprint: stored before schema 6)"


def load(stores: list[Store]) -> list[tuple[Store, Run]]:
    """Every run of the stores, each once (a run merged into several stores is the same run)."""
    seen: dict[str, tuple[Store, Run]] = {}
    for store in stores:
        for run in store.runs():
            seen.setdefault(run.id, (store, run))
    return sorted(seen.values(), key=lambda sr: (sr[1].started_at, sr[1].id))


def disagreements(matchups: list[tuple[Run, Matchup]]) -> list[str]:
    """Reproducibility failures: one matchup key with different per-sample results in different runs."""
    by_key: dict[str, list[tuple[Run, Matchup]]] = {}
    for run, m in matchups:
        if m.status == Status.OK and m.key and m.robust_correct is not None and m.clean_correct is not None:
            by_key.setdefault(m.key, []).append((run, m))
    found = []
    for key, group in by_key.items():
        first_run, first = group[0]
        for run, m in group[1:]:
            differ = int(np.sum((m.robust != first.robust) | (m.clean != first.clean)))
            if differ:
                found.append(f"{m.attack}: not reproducible: the same matchup (key {key[:10]}) left "
                             f"{first.robust.mean():.1%} robust in run {first_run.id} and "
                             f"{m.robust.mean():.1%} in run {run.id} ({differ} sample(s) differ); check both "
                             "machines' setups")
                break
    return found


def _cover(target: np.ndarray, candidates: list[tuple[str, np.ndarray]]) -> list[str]:
    """Greedily, the fewest candidates whose broken samples together cover ``target``."""
    left, chosen = target.copy(), []
    while left.any():
        name, broken = max(candidates, key=lambda c: int((c[1] & left).sum()))
        if not (broken & left).any():
            break
        chosen.append(name)
        left &= ~broken
    return chosen


def _entry(threat: Threat, identity: str, data: str, parts: list[_Part]) -> Entry:
    """One measured entry from the runs that evaluated it on the same images."""
    pairs = [(p.run, m) for p in parts for m in p.matchups]
    ok = [(run, m) for run, m in pairs if m.status == Status.OK and m.robust_correct is not None]
    first = pairs[0][1]
    samples = parts[0].run.samples
    entry = Entry(threat, first.model, first.defense, identity=identity, samples=samples, sample_set=data,
                  attacks=len({m.key or (run.id, m.attack) for run, m in ok}),
                  keys=sorted({m.key for _, m in ok if m.key}),
                  external=sorted({m.attack for _, m in ok if m.gradient.get("external")}))
    aliases = sorted({f"{m.model}+{m.defense}" for _, m in pairs} - {f"{first.model}+{first.defense}"})
    if aliases:
        entry.flags.append(f"also labelled {', '.join(aliases)} (same weights and defense chain)")
    sizes = {len(m.robust) for _, m in ok}
    if len(sizes) > 1:
        entry.flags.append(f"per-sample results of different lengths ({sorted(sizes)}); left out of the worst case")
    elif ok:
        robust = np.logical_and.reduce([m.robust for _, m in ok])
        clean = ok[0][1].clean
        entry.clean_accuracy, entry.worst_case = float(clean.mean()), float(robust.mean())
        unsteady = int(np.logical_or.reduce([m.clean_correct != clean for _, m in ok]).sum())
        if unsteady:
            entry.flags.append(f"clean predictions differ between its matchups on {unsteady} sample(s): a randomized "
                               "defense, or runs that are not reproducible")
        named: dict[bytes, tuple[str, np.ndarray]] = {}
        for run, m in ok:  # one candidate per distinct result: reused copies of a matchup are the same evidence
            label = f"{m.attack}{f' [{m.suite}]' if m.suite else ''} @ {run.id}"
            named.setdefault(m.robust.tobytes(), (label, ~m.robust))
        entry.achieved_by = _cover(clean & ~robust, list(named.values()))
        for suite in sorted({m.suite for _, m in ok if m.suite}):
            entry.suites[suite] = float(np.logical_and.reduce([m.robust for _, m in ok if m.suite == suite])
                                        .mean())
    unique = {m.key or (run.id, m.attack): m for run, m in ok}
    entry.passes = total_passes(unique.values())
    runs_of: dict[str, list[str]] = {}  # each run's flag, said once with the runs that raised it
    for part in parts:
        run = part.run
        entry.sources.append(Source(
            run.id, run.origin or str(part.store.results_dir.resolve()), run.scenario, run.scenario_digest,
            run.arena_version, entry_identity(run, part.matchups[0])[1], run.data_fingerprint, run.seed, run.device,
            run.runtime.get("precision", "fp32" if run.data_fingerprint else "unrecorded"), run.started_at,
            run.status, [m.attack for m in part.matchups], sorted({m.suite for m in part.matchups if m.suite}),
            total_passes(m for m in part.matchups if m.status == Status.OK),
            run.weights.get(f"{part.matchups[0].model}/{part.matchups[0].defense}", {}).get("source"),
        ))
        if run.status != "complete":
            entry.flags.append(f"run {run.id} is {run.status}: only its finished matchups count")
        for flag in part.flags:
            runs_of.setdefault(flag, []).append(run.id)
    entry.flags += [f"run {runs[0]}: {flag}" if len(runs) == 1 else f"{flag} (in {len(runs)} runs: {', '.join(runs)})"
                    for flag, runs in runs_of.items()]
    if not parts[0].run.data_fingerprint:
        entry.flags.append("sample set not fingerprinted (store older than schema 6): matched by data set and count")
    entry.flags += disagreements(pairs)
    if entry.worst_case is None:
        entry.flags.append("no valid matchup: no number")
    return entry


def _rank(entries: list[Entry]) -> None:
    """Rank each sample set's entries by worst case, then clean accuracy; equal worst cases share a rank. Entries
    off the threat model's main sample set (the one most entries share) say so."""
    measured = [e for e in entries if e.kind == "measured" and e.worst_case is not None]
    sets: dict[str, list[Entry]] = {}
    for e in measured:
        sets.setdefault(e.sample_set, []).append(e)
    if not sets:
        return
    main = max(sets, key=lambda s: (len(sets[s]), sets[s][0].samples))
    for name, group in sets.items():
        group.sort(key=lambda e: (-(e.worst_case or 0.0), -(e.clean_accuracy or 0.0)))  # measured: each has one
        for position, e in enumerate(group):
            tied = position and e.worst_case == group[position - 1].worst_case
            e.rank = group[position - 1].rank if tied else position + 1
            if name != main:
                e.main_set = False
                e.flags.append(f"ranked among the {len(group)} entr{'y' if len(group) == 1 else 'ies'} on its own "
                               f"{e.samples} images ({data_label(name)}), not against the "
                               f"{sets[main][0].samples} images ({data_label(main)}) most entries share")


def data_label(data: str) -> str:
    """A sample set as a table shows it: its fingerprint's first characters, or the description of an old one."""
    return f"data {data[:10]}" if " " not in data else data


def standing(stores: list[Store], reported: Sequence[Entry] = ()) -> dict[Threat, list[Entry]]:
    """Every entry of the stores' runs, grouped by threat model and ranked; ``reported`` rows sit beside them."""
    groups: dict[tuple[Threat, str, str], list[_Part]] = {}
    for store, run in load(stores):
        threat = Threat.of(run.dataset, run.threat.norm, run.threat.eps)
        loaded = store.matchups(run.id)
        flags = {(row.model, row.defense): row.flags for row in board(store, run, loaded)}
        by_pair: dict[tuple[str, str], list[Matchup]] = {}
        for m in loaded:
            by_pair.setdefault((m.model, m.defense), []).append(m)
        for (model, defense), matchups in by_pair.items():
            identity = entry_identity(run, matchups[0])[0]
            groups.setdefault((threat, identity, sample_set(run)), []).append(
                _Part(store, run, matchups, flags.get((model, defense), [])))
    tables: dict[Threat, list[Entry]] = {}
    for (threat, identity, data), parts in groups.items():
        tables.setdefault(threat, []).append(_entry(threat, identity, data, parts))
    marks = [v for store in stores for v in store.verifications()]
    for entries in tables.values():
        for entry in entries:
            entry.verification = verification_mark(entry, marks)
    for entry in reported:
        tables.setdefault(entry.threat, []).append(entry)
    for entries in tables.values():
        _rank(entries)
        entries.sort(key=lambda e: (e.kind != "measured", e.rank is None, not e.main_set, e.sample_set, e.rank or 0,
                                    -(e.worst_case or 0.0)))
    return dict(sorted(tables.items()))


def weights_tag(entry: Entry) -> str:
    """A short hash of the entry's weights (and defense chain), which tells apart entries that share a label."""
    return f"weights {entry.identity[:8]}" if entry.identity and not entry.identity.startswith("label ") else ""


def verification_mark(entry: Entry, marks: list[Verification]) -> str:
    """The latest mark of ``arena verify`` on this entry that replayed every matchup now behind its number; an
    older mark, made before more matchups were added, leaves the entry unverified and says so."""
    mine = sorted((v for v in marks if v.identity == entry.identity and v.sample_set == entry.sample_set
                   and Threat.of(v.dataset, v.norm, v.eps) == entry.threat), key=lambda v: v.verified_at)
    covering = [v for v in mine if set(entry.keys) <= set(v.keys)]
    if covering:
        return covering[-1].mark
    if mine:
        return f"unverified ({len(set(entry.keys) - set(mine[-1].keys))} matchup(s) added since the verification " \
               f"of {mine[-1].verified_at[:10]})"
    return "unverified"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def tables(board_: dict[Threat, list[Entry]]) -> list[Table]:
    """One renderable table per threat model (``arena.formats.render`` writes it as text, Markdown or CSV)."""
    columns = ["rank", "model", "defense", "kind", "clean", "best known", "achieved by", "samples", "sample set",
               "runs", "passes/sample", "verified", "flags"]
    found = []
    for threat, entries in board_.items():
        records = [{
            "rank": e.rank, "model": e.model, "defense": e.defense, "kind": e.kind, "clean": e.clean_accuracy,
            "best known": e.worst_case, "achieved by": ", ".join(e.achieved_by) or None, "samples": e.samples,
            "sample set": data_label(e.sample_set) if e.sample_set else None, "runs": ", ".join(e.runs) or None,
            "passes/sample": None if e.passes is None else round(e.passes, 1),
            "verified": e.verification if e.kind == "measured" else None, "flags": e.flags,
        } for e in entries]
        found.append(Table(f"{threat}: {sum(e.kind == 'measured' for e in entries)} measured, "
                           f"{sum(e.kind == 'reported' for e in entries)} reported", columns, records,
                           {"clean", "best known"}, {"samples", "sample set", "runs", "passes/sample"}))
    return found


def as_json(board_: dict[Threat, list[Entry]]) -> str:
    """The whole board with every entry's provenance, JSON."""
    return json.dumps([{"threat": str(t), **asdict(t), "entries": [asdict(e) for e in entries]}
                       for t, entries in board_.items()], indent=2, default=str)


def open_stores(folders: list[Path]) -> list[Store]:
    """Read-only stores of the folders (or their ``.db`` files), each checked whole and refused clearly when it is
    not a sound store (``arena.untrusted.check_store``)."""
    opened: list[Store] = []
    try:
        for folder in folders:
            opened.append(Store.open_existing(folder))
    except BaseException:
        for store in opened:
            store.close()
        raise
    return opened
