"""``arena merge``: import another results store's runs (with their matchups and kept examples) and its ``arena
verify`` marks into this one.

A run is identified by its id, a matchup by its run and model × defense × attack, so merging twice, or merging
stores that already share runs, adds nothing twice. The other store is someone else's file: it is checked whole first
(``arena.untrusted.check_store``), and nothing already here is changed by it: a differing copy of a run or matchup is
reported and left out. Each run is imported in its own transaction and remembers the results folder it came from.
Matchup keys that give different per-sample results are kept and reported, not hidden: the standing board flags them
as reproducibility failures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from arena.standing import disagreements
from arena.store import DB_NAME, Store, StoreError
from arena.tables import columns, insert


@dataclass
class MergeResult:
    """What a merge did: runs added, runs already here, matchups added, the reproducibility failures it found, and
    the copies of runs already here that differ from this store's (reported, never imported)."""

    runs: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    matchups: int = 0
    failures: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)


#: Run fields a copy of the same run may legitimately differ in: it may have finished since (or been merged before).
_PROGRESS = ("status", "finished_at", "weights", "origin")


def _differs(mine: dict, theirs: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """The fields both rows have whose values differ."""
    return sorted(k for k in mine.keys() & theirs.keys() if k not in ignore and mine[k] != theirs[k])


def _finishes(mine: dict, theirs: dict) -> bool:
    """Whether ``theirs`` is this unfinished run completed elsewhere: its weights extend the ones recorded here."""
    if mine["status"] == "complete" or theirs["status"] != "complete":
        return False
    here, there = json.loads(mine["weights"]), json.loads(theirs["weights"])
    return all(there.get(k) == v for k, v in here.items())


def _weights_differ(mine: dict, theirs: dict) -> list[str]:
    """``["weights"]`` when the copies record different weights and neither is the other, unfinished, one's."""
    if mine["weights"] == theirs["weights"] or _finishes(mine, theirs) or _finishes(theirs, mine):
        return []
    return ["weights"]


def merge(target: Path, other: Path) -> MergeResult:
    """Import every run of the store at ``other`` (a results folder, or a store's ``.db`` file itself) into the store
    at ``target``, after checking ``other`` whole; the columns a side lacks (an older schema) take their defaults.
    Nothing already here changes: a run or matchup here whose copy in ``other`` differs is reported, not replaced."""
    with Store.open_existing(other) as source:
        if source.path.resolve() == (Path(target) / DB_NAME).resolve():
            raise StoreError(f"{other}: is the --results store itself; pass another results folder to merge")
        with Store(target) as store:
            return _import(source, store, other)


def _import(source: Store, store: Store, other: Path) -> MergeResult:
    """Every run of ``source`` not already in ``store``, and the matchups ``store`` lacks of runs it holds."""
    result = MergeResult()
    fields = {t: columns(store.db, t) for t in ("runs", "matchups", "examples")}
    origin = str(source.results_dir.resolve())
    kept = source.has_table("examples")  # a store older than examples kept none
    for run in source.runs():
        row = dict(source.db.execute("SELECT * FROM runs WHERE id = ?", (run.id,)).fetchone())
        found = store.db.execute("SELECT * FROM runs WHERE id = ?", (run.id,)).fetchone()
        here = None if found is None else dict(found)
        if here is not None:
            changed = _differs(here, row, _PROGRESS) or _weights_differ(here, {**row, "status": run.status})
            if changed:
                result.altered.append(f"run {run.id}: the copy in {other} differs from the one here in "
                                      f"{', '.join(changed)}; kept this store's, imported none of it: one of the "
                                      "two stores was altered")
                result.known.append(run.id)
                continue
        have = {(r["model"], r["defense"], r["attack"]): dict(r)
                for r in store.db.execute("SELECT * FROM matchups WHERE run_id = ?", (run.id,))}
        added = 0
        with store.writing():
            if here is None:
                values = {k: v for k, v in row.items() if k in fields["runs"]}
                insert(store.db, "runs", {**values, "status": run.status, "origin": row.get("origin") or origin})
            elif _finishes(here, {**row, "status": run.status}):  # merged while it was still running
                store.db.execute("UPDATE runs SET status = ?, finished_at = ?, weights = ? WHERE id = ?",
                                 (run.status, row["finished_at"], row["weights"], run.id))
            for m in source.db.execute("SELECT * FROM matchups WHERE run_id = ? ORDER BY id", (run.id,)):
                m = dict(m)
                mine = have.get((m["model"], m["defense"], m["attack"]))
                if mine is not None:
                    changed = _differs(mine, m, ("id",))
                    if changed:
                        result.altered.append(f"run {run.id}: {m['attack']} vs {m['model']}+{m['defense']} differs "
                                              f"from the copy here in {', '.join(changed)} (kept this store's); one "
                                              "of the two stores was altered")
                    continue
                new_id = insert(store.db, "matchups", {k: v for k, v in m.items() if k in fields["matchups"]
                                                       and k != "id"})
                for example in _examples(source, m["id"]) if kept else []:
                    insert(store.db, "examples", {**{k: v for k, v in example.items() if k in fields["examples"]},
                                                  "matchup_id": new_id})
                added += 1
        (result.known if here is not None else result.runs).append(run.id)
        result.matchups += added
    for mark in source.verifications():  # ``arena verify`` marks, each kept once
        store.add_verification(mark)
    pairs = [(run, m) for run in store.runs() for m in store.matchups(run.id)]
    result.failures += disagreements(pairs)
    return result


def _examples(store: Store, matchup_id: int) -> list[dict]:
    """The examples a matchup kept."""
    return [dict(r) for r in store.db.execute("SELECT * FROM examples WHERE matchup_id = ?", (matchup_id,))]
