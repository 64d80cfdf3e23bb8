"""``arena merge``: import another results store's runs (with their matchups and kept examples) and its ``arena
verify`` marks into this one.

A run is identified by its id, a matchup by its run and model × defense × attack, so merging twice, or merging
stores that already share runs, adds nothing twice. Each run is imported in its own transaction and remembers the
results folder it came from. Matchup keys that give different per-sample results are kept and reported, not hidden:
the standing board flags them as reproducibility failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from arena.standing import disagreements
from arena.store import Store, StoreError, results_folder
from arena.tables import columns, insert


@dataclass
class MergeResult:
    """What a merge did: runs added, runs already here, matchups added, and the reproducibility failures (or altered
    copies of one run) it found."""

    runs: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    matchups: int = 0
    failures: list[str] = field(default_factory=list)


def merge(target: Path, other: Path) -> MergeResult:
    """Import every run of the store at ``other`` (a results folder or its ``arena.db``) into the store at
    ``target``; the columns a side lacks (an older schema) take their defaults."""
    source_dir = results_folder(other)
    if source_dir.resolve() == Path(target).resolve():
        raise StoreError(f"{other}: is the --results store itself; pass another results folder to merge")
    result = MergeResult()
    with Store.open_existing(source_dir) as source, Store(target) as store:
        fields = {t: columns(store.db, t) for t in ("runs", "matchups", "examples")}
        origin = str(source.results_dir.resolve())
        kept = source.has_table("examples")  # a store older than examples kept none
        for run in source.runs():
            row = dict(source.db.execute("SELECT * FROM runs WHERE id = ?", (run.id,)).fetchone())
            have = {(r["model"], r["defense"], r["attack"]): (r["clean_correct"], r["robust_correct"])
                    for r in store.db.execute("SELECT model, defense, attack, clean_correct, robust_correct"
                                              " FROM matchups WHERE run_id = ?", (run.id,))}
            exists = store.db.execute("SELECT 1 FROM runs WHERE id = ?", (run.id,)).fetchone() is not None
            added = 0
            with store.writing():
                if not exists:
                    values = {k: v for k, v in row.items() if k in fields["runs"]}
                    insert(store.db, "runs", {**values, "status": run.status, "origin": row.get("origin") or origin})
                elif run.status == "complete":  # a run merged while it was still running: now finished
                    store.db.execute("UPDATE runs SET status = ?, finished_at = ?, weights = ? WHERE id = ?",
                                     (run.status, row["finished_at"], row["weights"], run.id))
                for m in source.db.execute("SELECT * FROM matchups WHERE run_id = ? ORDER BY id", (run.id,)):
                    m = dict(m)
                    here = have.get((m["model"], m["defense"], m["attack"]))
                    if here is not None:
                        if here != (m["clean_correct"], m["robust_correct"]):
                            result.failures.append(f"run {run.id}: {m['attack']} vs {m['model']}+{m['defense']} "
                                                   "differs from the copy already here (kept this store's); one "
                                                   "of the two stores was altered")
                        continue
                    new_id = insert(store.db, "matchups",
                                     {k: v for k, v in m.items() if k in fields["matchups"] and k != "id"})
                    for example in _examples(source, m["id"]) if kept else []:
                        insert(store.db, "examples", {**{k: v for k, v in example.items()
                                                          if k in fields["examples"]}, "matchup_id": new_id})
                    added += 1
            (result.known if exists else result.runs).append(run.id)
            result.matchups += added
        for mark in source.verifications():  # ``arena verify`` marks, each kept once
            store.add_verification(mark)
        pairs = [(run, m) for run in store.runs() for m in store.matchups(run.id)]
        result.failures += disagreements(pairs)
    return result


def _examples(store: Store, matchup_id: int) -> list[dict]:
    """The examples a matchup kept."""
    return [dict(r) for r in store.db.execute("SELECT * FROM examples WHERE matchup_id = ?", (matchup_id,))]
