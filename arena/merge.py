"""``arena merge``: import another results store's runs (with their matchups and kept examples) into this one.

A run is identified by its id, a matchup by its run and model × defense × attack, so merging twice, or merging
stores that already share runs, adds nothing twice. The other store is someone else's file: it is checked whole first
(``arena.untrusted.check_store``), and nothing already here is changed by it: a differing copy of a run or matchup is
reported and left out. Each run is imported in its own transaction and remembers the results folder it came from.
Matchup keys that give different per-sample results are kept and reported, not hidden: the standing board flags them
as reproducibility failures.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from arena.standing import disagreements
from arena.store import DB_NAME, Store, StoreError


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


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]


def _insert(db: sqlite3.Connection, table: str, values: dict) -> int:
    names = ", ".join(f'"{name}"' for name in values)
    cursor = db.execute(f'INSERT INTO "{table}" ({names}) VALUES ({", ".join("?" * len(values))})',
                        list(values.values()))
    return cursor.lastrowid


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
    source = Store.open_existing(other)
    if source.path.resolve() == (Path(target) / DB_NAME).resolve():
        source.close()
        raise StoreError(f"{other}: is the --results store itself; pass another results folder to merge")
    try:
        store = Store(target)
    except BaseException:
        source.close()
        raise
    result = MergeResult()
    try:
        columns = {t: _columns(store.db, t) for t in ("runs", "matchups", "examples")}
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
            with store._writing():
                if here is None:
                    values = {k: v for k, v in row.items() if k in columns["runs"]}
                    _insert(store.db, "runs", {**values, "status": run.status, "origin": row.get("origin") or origin})
                elif _finishes(here, {**row, "status": run.status}):  # merged while it was still running
                    store.db.execute("UPDATE runs SET status = ?, finished_at = ?, weights = ? WHERE id = ?",
                                     (run.status, row["finished_at"], row["weights"], run.id))
                for m in source.db.execute("SELECT * FROM matchups WHERE run_id = ? ORDER BY id", (run.id,)):
                    m = dict(m)
                    mine = have.get((m["model"], m["defense"], m["attack"]))
                    if mine is not None:
                        changed = _differs(mine, m, ("id",))
                        if changed:
                            result.altered.append(
                                f"run {run.id}: {m['attack']} vs {m['model']}+{m['defense']} differs from the copy "
                                f"here in {', '.join(changed)} (kept this store's); one of the two stores was "
                                "altered")
                        continue
                    new_id = _insert(store.db, "matchups",
                                     {k: v for k, v in m.items() if k in columns["matchups"] and k != "id"})
                    for example in _examples(source, m["id"]) if kept else []:
                        _insert(store.db, "examples", {**{k: v for k, v in example.items()
                                                          if k in columns["examples"]}, "matchup_id": new_id})
                    added += 1
            (result.known if here is not None else result.runs).append(run.id)
            result.matchups += added
        pairs = [(run, m) for run in store.runs() for m in store.matchups(run.id)]
        result.failures += disagreements(pairs)
    finally:
        source.close()
        store.close()
    return result


def _examples(store: Store, matchup_id: int) -> list[dict]:
    """The examples a matchup kept."""
    return [dict(r) for r in store.db.execute("SELECT * FROM examples WHERE matchup_id = ?", (matchup_id,))]
