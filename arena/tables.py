"""The results store's tables: the schema script, how an older store is brought up to date in place (migrations),
and one way to write a row (an insert made from the row's own columns)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from arena.errors import StoreError
from arena.records import Status

#: Bumped when the tables change; a store of another version is refused rather than misread.
SCHEMA_VERSION = 9
#: The matchup statuses the store accepts: ``Status``'s values, so a stored status is always one.
STATUSES = ", ".join(f"'{status}'" for status in Status)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    scenario TEXT NOT NULL,
    scenario_path TEXT NOT NULL,
    scenario_digest TEXT NOT NULL,
    scenario_text TEXT NOT NULL,
    arena_version TEXT NOT NULL,
    seed INTEGER NOT NULL,
    norm TEXT NOT NULL,
    eps REAL NOT NULL,
    dataset TEXT NOT NULL,
    samples INTEGER NOT NULL,
    device TEXT NOT NULL,
    weights TEXT NOT NULL DEFAULT '{}',
    classes TEXT NOT NULL DEFAULT '[]',
    expected TEXT NOT NULL DEFAULT '[]',
    pid INTEGER,
    host TEXT,
    data_fingerprint TEXT,
    runtime TEXT NOT NULL DEFAULT '{}',
    origin TEXT,
    status TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE TABLE IF NOT EXISTS matchups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(id),
    model TEXT NOT NULL,
    defense TEXT NOT NULL,
    attack TEXT NOT NULL,
    params TEXT NOT NULL,
    gradient TEXT NOT NULL DEFAULT '{}',
    key TEXT NOT NULL,
    reused_from TEXT,
    status TEXT NOT NULL CHECK (status IN (STATUSES)),
    detail TEXT,
    samples INTEGER NOT NULL,
    clean_accuracy REAL,
    robust_accuracy REAL,
    attack_success_rate REAL,
    mean_norm REAL,
    max_norm REAL,
    wall_time_s REAL NOT NULL,
    clean_correct BLOB,
    robust_correct BLOB,
    finished_at TEXT NOT NULL,
    attacked BLOB,
    forward_passes INTEGER,
    backward_passes INTEGER,
    checks TEXT NOT NULL DEFAULT '{}',
    suite TEXT NOT NULL DEFAULT '',
    cascade_after TEXT NOT NULL DEFAULT '[]',
    attack_time_s REAL,
    UNIQUE (run_id, model, defense, attack)
);
CREATE INDEX IF NOT EXISTS matchups_key ON matchups (key);
CREATE TABLE IF NOT EXISTS examples (
    matchup_id INTEGER NOT NULL REFERENCES matchups(id),
    sample INTEGER NOT NULL,
    label INTEGER NOT NULL,
    shape TEXT NOT NULL,
    clean BLOB NOT NULL,
    adversarial BLOB NOT NULL,
    predicted_before INTEGER NOT NULL,
    predicted_after INTEGER NOT NULL,
    confidence_before REAL NOT NULL,
    confidence_after REAL NOT NULL,
    codec TEXT NOT NULL DEFAULT 'raw'
);
CREATE TABLE IF NOT EXISTS verifications (
    id TEXT PRIMARY KEY,
    entry TEXT NOT NULL,
    identity TEXT NOT NULL,
    sample_set TEXT NOT NULL,
    dataset TEXT NOT NULL,
    norm TEXT NOT NULL,
    eps REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('verified', 'not reproducible')),
    samples TEXT NOT NULL,
    keys TEXT NOT NULL,
    differing TEXT NOT NULL,
    seed INTEGER NOT NULL,
    machine TEXT NOT NULL,
    device TEXT NOT NULL,
    arena_version TEXT NOT NULL,
    verified_at TEXT NOT NULL
);
""".replace("STATUSES", STATUSES)

#: How a store of an older schema is brought up to date in place, so no recorded result is lost: the columns each
#: schema version added (tables a version added come from the schema script, with all their columns).
MIGRATIONS: dict[int, list[tuple[str, str]]] = {
    1: [("matchups", "gradient TEXT NOT NULL DEFAULT '{}'")],
    2: [("matchups", column) for column in (
        "attacked BLOB", "forward_passes INTEGER", "backward_passes INTEGER", "checks TEXT NOT NULL DEFAULT '{}'",
        "suite TEXT NOT NULL DEFAULT ''", "cascade_after TEXT NOT NULL DEFAULT '[]'",
    )],
    3: [("runs", column) for column in (
        "classes TEXT NOT NULL DEFAULT '[]'", "expected TEXT NOT NULL DEFAULT '[]'", "pid INTEGER", "host TEXT",
    )],
    4: [("examples", "codec TEXT NOT NULL DEFAULT 'raw'")],
    5: [("runs", column) for column in ("data_fingerprint TEXT", "runtime TEXT NOT NULL DEFAULT '{}'", "origin TEXT")],
    8: [("matchups", "attack_time_s REAL")],
}
#: Tables whose constraints a schema version changed (7: a matchup may be ``skipped``). SQLite cannot alter a CHECK,
#: so such a table is rebuilt from the schema script and its rows copied over (SQLite's documented procedure).
REBUILDS: dict[int, list[str]] = {6: ["matchups"]}


def refuse_newer(path: Path, version: int) -> None:
    """Refuse a store that a newer arena wrote: its tables may mean something this arena cannot read."""
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} was written by a newer arena (store schema {version}, this arena reads up "
                         f"to {SCHEMA_VERSION}); upgrade arena or pass another --results folder")


def create_or_migrate(db: sqlite3.Connection, path: Path) -> None:
    """Create the tables, or bring an older schema up to date, in one transaction: a crash leaves the store as
    it was. A store left half-made by an older arena (tables but no version) is rebuilt when it holds no run."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                        " AND name NOT LIKE 'sqlite_%'")]
    refuse_newer(path, version)
    db.execute("BEGIN IMMEDIATE")
    try:
        if tables and version == 0:
            if "runs" in tables and db.execute("SELECT count(*) FROM runs").fetchone()[0]:
                raise StoreError(f"{path} was not created completely but holds runs; move it away (or "
                                 "pass another --results folder) and keep it for its data")
            for table in tables:
                db.execute(f'DROP TABLE "{table}"')
            tables = []
        apply_schema(db)
        for step in range(version, SCHEMA_VERSION) if tables else ():
            for table, column in MIGRATIONS.get(step, ()):
                if column.split()[0] not in columns(db, table):  # a table the schema script just made has it already
                    db.execute(f'ALTER TABLE "{table}" ADD COLUMN {column}')
            for table in REBUILDS.get(step, ()):
                rebuild(db, table)
        apply_schema(db)  # the indexes a rebuilt table dropped
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.commit()
    except BaseException:
        db.rollback()
        raise


def apply_schema(db: sqlite3.Connection) -> None:
    """Create whatever table or index of the schema script is missing (inside the caller's transaction)."""
    for statement in filter(str.strip, SCHEMA.split(";")):
        db.execute(statement)


def rebuild(db: sqlite3.Connection, table: str) -> None:
    """Recreate ``table`` with the schema script's definition, keeping every row (ids included) and column."""
    create = next(s for s in SCHEMA.split(";") if f"TABLE IF NOT EXISTS {table} (" in s)
    names = ", ".join(f'"{name}"' for name in columns(db, table))
    db.execute(create.replace(f"IF NOT EXISTS {table} (", f'"{table}_rebuilt" ('))
    db.execute(f'INSERT INTO "{table}_rebuilt" ({names}) SELECT {names} FROM "{table}"')
    db.execute(f'DROP TABLE "{table}"')
    db.execute(f'ALTER TABLE "{table}_rebuilt" RENAME TO "{table}"')


def columns(db: sqlite3.Connection, table: str) -> list[str]:
    """The columns ``table`` has in this store (an older store may lack the newer ones)."""
    return [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]


def insert(db: sqlite3.Connection, table: str, row: dict[str, Any]) -> int:
    """Write one row, the statement made from the row's own column names (so names and values cannot drift
    apart); returns its rowid."""
    names = ", ".join(f'"{name}"' for name in row)
    cursor = db.execute(f'INSERT INTO "{table}" ({names}) VALUES ({", ".join("?" * len(row))})', list(row.values()))
    return int(cursor.lastrowid or 0)
