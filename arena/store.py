"""The results store: one SQLite file per results folder; each matchup is written in its own transaction."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from arena.errors import ArenaError
from arena.records import Example, Matchup, Run, Verification
from arena.threat import ThreatModel
from arena.version import __version__

DB_NAME = "arena.db"
#: Bumped when the tables change; a store of another version is refused rather than misread.
SCHEMA_VERSION = 8


def results_folder(path: Path) -> Path:
    """The results folder ``path`` names: the folder itself, or the one holding it when it is its ``.db`` file."""
    path = Path(path)
    return path.parent if path.suffix == ".db" and path.is_file() else path


class StoreError(ArenaError):
    """A results store or run that does not exist; the message says what does."""

_SCHEMA = """
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
    status TEXT NOT NULL CHECK (status IN ('ok', 'invalid', 'error', 'skipped')),
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
"""

#: How a store of an older schema is brought up to date in place, so no recorded result is lost: the columns each
#: schema version added (tables a version added come from the schema script, with all their columns).
_MIGRATIONS: dict[int, list[tuple[str, str]]] = {
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
}
#: Tables whose constraints a schema version changed (7: a matchup may be ``skipped``). SQLite cannot alter a CHECK,
#: so such a table is rebuilt from the schema script and its rows copied over (SQLite's documented procedure).
_REBUILDS: dict[int, list[str]] = {6: ["matchups"]}


def _encode(image: np.ndarray) -> bytes:
    """An image's exact float32 values, zlib-compressed (lossless: they decode bit for bit)."""
    return zlib.compress(np.ascontiguousarray(image, dtype=np.float32).tobytes(), 6)


def _decode(blob: bytes, codec: str, shape: list[int]) -> np.ndarray:
    """The float32 image ``_encode`` stored (``zlib``), or that a store older than compression holds (``raw``)."""
    raw = zlib.decompress(blob) if codec == "zlib" else blob
    return np.frombuffer(raw, dtype=np.float32).reshape(shape)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _pack(mask: np.ndarray | None) -> bytes | None:
    return None if mask is None else np.asarray(mask, dtype=np.uint8).tobytes()


def _unpack(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(blob, dtype=np.uint8).astype(bool)


def _get(row: sqlite3.Row, key: str, default: Any) -> Any:
    """A column of ``row``, or ``default`` when a store of an older schema (read without migrating) lacks it."""
    return row[key] if key in row.keys() else default


def _matchup(row: sqlite3.Row) -> Matchup:
    fields = set(Matchup.__dataclass_fields__)
    return Matchup(**{
        **{k: row[k] for k in row.keys() if k in fields},
        "params": json.loads(row["params"]),
        "gradient": json.loads(_get(row, "gradient", "{}")),
        "checks": json.loads(_get(row, "checks", "{}")),
        "cascade_after": json.loads(_get(row, "cascade_after", "[]")),
        "clean_correct": _unpack(row["clean_correct"]),
        "robust_correct": _unpack(row["robust_correct"]),
        "attacked": _unpack(_get(row, "attacked", None)),
    })


def _alive(pid: int | None, host: str | None) -> bool:
    """Whether the process that started a run may still be running it (a run from another machine is assumed to)."""
    if pid is None or host != socket.gethostname():
        return host is not None and host != socket.gethostname()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """Runs and their matchups in ``<results>/arena.db``.

    Opened for writing (``arena run``) the store is created in one transaction, migrated in place, and runs whose
    process is gone are marked ``interrupted``. Opened ``readonly`` (``leaderboard``, ``report``) it is never
    written, its journal mode is left alone and an older schema is read as it is, so a read-only copy works.
    """

    def __init__(self, results_dir: Path, readonly: bool = False) -> None:
        self.results_dir = Path(results_dir)
        self.path = self.results_dir / DB_NAME
        self.readonly = readonly
        self._check_files()
        try:
            if readonly:
                self.db = self._connect_readonly()
                self._refuse_newer(self.db.execute("PRAGMA user_version").fetchone()[0])
                return
            self.db = sqlite3.connect(self.path)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self._create_or_migrate()
            self._mark_interrupted()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot be {'read' if readonly else 'opened for writing'} ({exc}); "
                             "check the folder's permissions and free space, or pass another --results folder"
                             ) from None

    def _check_files(self) -> None:
        """A clear refusal for a results folder that is a file or cannot be made, and for an ``arena.db`` that is
        a folder or not SQLite (a link is followed to what it names)."""
        if self.results_dir.exists() and not self.results_dir.is_dir():
            raise StoreError(f"results folder {self.results_dir} is a file; pass --results FOLDER")
        if not self.readonly:
            try:
                self.results_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"results folder {self.results_dir} cannot be created ({exc.strerror}); pass "
                                 "--results FOLDER in a place you can write") from None
        if not self.path.exists():
            if self.path.is_symlink():
                raise StoreError(f"{self.path} is a link to nothing; remove it or pass another --results folder")
            return
        if not self.path.is_file():
            raise StoreError(f"{self.path} is not a file (a folder?); move it away or pass another --results folder")
        with self.path.open("rb") as db:
            header = db.read(16)
        if header and header != b"SQLite format 3\x00":
            raise StoreError(f"{self.path} is not an arena results store (not an SQLite database); move it away or "
                             "pass another --results folder")

    def _connect_readonly(self) -> sqlite3.Connection:
        """Open without writing anything: ``mode=ro``, or ``immutable`` where even the WAL index cannot be made."""
        uri = self.path.resolve().as_uri()
        try:
            db = sqlite3.connect(f"{uri}?mode=ro", uri=True)
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            db = sqlite3.connect(f"{uri}?immutable=1", uri=True)
        db.row_factory = sqlite3.Row
        return db

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer arena (store schema {version}, this arena reads up "
                             f"to {SCHEMA_VERSION}); upgrade arena or pass another --results folder")

    def _create_or_migrate(self) -> None:
        """Create the tables, or bring an older schema up to date, in one transaction: a crash leaves the store as
        it was. A store left half-made by an older arena (tables but no version) is rebuilt when it holds no run."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        tables = [r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                                 " AND name NOT LIKE 'sqlite_%'")]
        self._refuse_newer(version)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            if tables and version == 0:
                if "runs" in tables and self.db.execute("SELECT count(*) FROM runs").fetchone()[0]:
                    raise StoreError(f"{self.path} was not created completely but holds runs; move it away (or "
                                     "pass another --results folder) and keep it for its data")
                for table in tables:
                    self.db.execute(f'DROP TABLE "{table}"')
                tables = []
            self._apply_schema()
            for step in range(version, SCHEMA_VERSION) if tables else ():
                for table, column in _MIGRATIONS.get(step, ()):
                    present = {row[1] for row in self.db.execute(f'PRAGMA table_info("{table}")')}
                    if column.split()[0] not in present:  # a table the schema script just made has it already
                        self.db.execute(f'ALTER TABLE "{table}" ADD COLUMN {column}')
                for table in _REBUILDS.get(step, ()):
                    self._rebuild(table)
            self._apply_schema()  # the indexes a rebuilt table dropped
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.db.commit()
        except BaseException:
            self.db.rollback()
            raise

    def _apply_schema(self) -> None:
        """Create whatever table or index of the schema script is missing (inside the caller's transaction)."""
        for statement in filter(str.strip, _SCHEMA.split(";")):
            self.db.execute(statement)

    def _rebuild(self, table: str) -> None:
        """Recreate ``table`` with the schema script's definition, keeping every row (ids included) and column."""
        create = next(s for s in _SCHEMA.split(";") if f"TABLE IF NOT EXISTS {table} (" in s)
        columns = ", ".join(f'"{row[1]}"' for row in self.db.execute(f'PRAGMA table_info("{table}")'))
        self.db.execute(create.replace(f"IF NOT EXISTS {table} (", f'"{table}_rebuilt" ('))
        self.db.execute(f'INSERT INTO "{table}_rebuilt" ({columns}) SELECT {columns} FROM "{table}"')
        self.db.execute(f'DROP TABLE "{table}"')
        self.db.execute(f'ALTER TABLE "{table}_rebuilt" RENAME TO "{table}"')

    def _mark_interrupted(self) -> None:
        """Runs left ``running`` by a process that is gone (killed, crashed) become ``interrupted``."""
        rows = self.db.execute("SELECT id, pid, host FROM runs WHERE status = 'running'").fetchall()
        dead = [r["id"] for r in rows if not _alive(r["pid"], r["host"])]
        with self.db:
            self.db.executemany("UPDATE runs SET status = 'interrupted' WHERE id = ?", [(d,) for d in dead])

    @classmethod
    def open_existing(cls, results_dir: Path) -> Store:
        """Open, read-only, a results folder that must already hold a store."""
        if not (Path(results_dir) / DB_NAME).exists():
            raise StoreError(f"no results store at {Path(results_dir) / DB_NAME}; run `arena run SCENARIO` first")
        store = cls(results_dir, readonly=True)
        if not store.has_table("runs"):
            store.close()  # an empty file, or a store whose creation never finished: nothing to read
            raise StoreError(f"{store.path} holds no arena results (no runs table); run `arena run SCENARIO "
                             f"--results {results_dir}` first, or pass another --results folder")
        return store

    def start_run(
        self, scenario: Any, threat: ThreatModel, samples: int, device: str, classes: Sequence[str] = (),
        data_fingerprint: str | None = None, runtime: dict[str, Any] | None = None,
        expected: list[tuple[str, str, str]] | None = None,
    ) -> str:
        """Record a new run of ``scenario`` under ``threat`` (status ``running``, with the matchups it will play: every
        model × defense × attack unless ``expected`` says otherwise, the process playing it, the evaluation images'
        content hash and the runtime settings) and return its id."""
        run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        if expected is None:
            expected = [(m.key, d.key, a.key) for m in scenario.models for d in scenario.defenses
                        for a in scenario.attacks]
        with self._writing():
            self.db.execute(
                "INSERT INTO runs (id, scenario, scenario_path, scenario_digest, scenario_text, arena_version, seed,"
                " norm, eps, dataset, samples, device, status, started_at, classes, expected, pid, host,"
                " data_fingerprint, runtime) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, scenario.name, scenario.path, scenario.digest, scenario.text, __version__, scenario.seed,
                 threat.norm, threat.eps, scenario.dataset.name, samples, device, "running", _now(),
                 json.dumps(list(classes)), json.dumps([list(e) for e in expected]), os.getpid(), socket.gethostname(),
                 data_fingerprint, json.dumps(runtime or {}, sort_keys=True)),
            )
        return run_id

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One transaction; a failed write (disk full, read-only) becomes one clear error, and what was committed
        before stays."""
        try:
            with self.db:
                yield
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: could not be written ({exc}); every matchup finished before is kept: "
                             "free some space (or fix the folder's permissions) and run the same command again to "
                             "resume") from None

    def add_matchup(self, run_id: str, m: Matchup) -> None:
        """Write one matchup and its examples atomically: it is in the store whole, or not at all."""
        with self._writing():
            cursor = self.db.execute(
                "INSERT INTO matchups (run_id, model, defense, attack, params, gradient, key, reused_from, status,"
                " detail, samples, clean_accuracy, robust_accuracy, attack_success_rate, mean_norm, max_norm,"
                " wall_time_s, clean_correct, robust_correct, finished_at, attacked, forward_passes, backward_passes,"
                " checks, suite, cascade_after) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, m.model, m.defense, m.attack, json.dumps(m.params, sort_keys=True),
                 json.dumps(m.gradient, sort_keys=True), m.key, m.reused_from,
                 m.status, m.detail,
                 m.samples, m.clean_accuracy, m.robust_accuracy, m.attack_success_rate, m.mean_norm, m.max_norm,
                 m.wall_time_s, _pack(m.clean_correct), _pack(m.robust_correct), _now(), _pack(m.attacked),
                 m.forward_passes, m.backward_passes, json.dumps(m.checks, sort_keys=True), m.suite,
                 json.dumps(m.cascade_after)),
            )
            self.db.executemany(
                "INSERT INTO examples (matchup_id, sample, label, shape, clean, adversarial, predicted_before,"
                " predicted_after, confidence_before, confidence_after, codec) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(cursor.lastrowid, e.sample, e.label, json.dumps(list(e.clean.shape)),
                  _encode(e.clean), _encode(e.adversarial),
                  e.predicted_before, e.predicted_after, e.confidence_before, e.confidence_after, "zlib")
                 for e in m.examples],
            )

    def has_table(self, name: str) -> bool:
        """Whether the store holds the table ``name`` (an older store lacks the newer tables)."""
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() \
            is not None

    def examples(self, m: Matchup) -> list[Example]:
        """The examples kept for a matchup: its own, or for a reused one those of the run that computed it (none in
        a store older than examples)."""
        if not self.has_table("examples"):
            return []
        rows = self.db.execute(
            "SELECT examples.* FROM examples JOIN matchups ON matchups.id = examples.matchup_id"
            " WHERE matchups.key = ? AND matchups.status = 'ok'"
            " AND matchups.id = (SELECT max(m2.id) FROM matchups m2 JOIN examples e2 ON e2.matchup_id = m2.id"
            " WHERE m2.key = ?) ORDER BY examples.rowid", (m.key, m.key),
        ).fetchall()
        found = []
        for row in rows:
            shape = json.loads(row["shape"])
            images = {k: _decode(row[k], _get(row, "codec", "raw"), shape) for k in ("clean", "adversarial")}
            found.append(Example(sample=row["sample"], label=row["label"], **images,
                                 predicted_before=row["predicted_before"], predicted_after=row["predicted_after"],
                                 confidence_before=row["confidence_before"], confidence_after=row["confidence_after"]))
        return found

    def add_verification(self, v: Verification) -> None:
        """Record an ``arena verify`` mark (a mark with the same id, merged twice, is kept once)."""
        with self._writing():
            self.db.execute(
                "INSERT OR IGNORE INTO verifications (id, entry, identity, sample_set, dataset, norm, eps, status,"
                " samples, keys, differing, seed, machine, device, arena_version, verified_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (v.id, v.entry, v.identity, v.sample_set, v.dataset, v.norm, v.eps, v.status, json.dumps(v.samples),
                 json.dumps(v.keys), json.dumps(v.differing), v.seed, v.machine, v.device, v.arena_version,
                 v.verified_at))

    def verifications(self) -> list[Verification]:
        """Every verification mark, oldest first (none in a store older than verification)."""
        if not self.has_table("verifications"):
            return []
        decoded = ("samples", "keys", "differing")
        return [Verification(**{k: json.loads(row[k]) if k in decoded else row[k] for k in row.keys()})
                for row in self.db.execute("SELECT * FROM verifications ORDER BY verified_at, rowid")]

    def finish_run(self, run_id: str, status: str, weights: dict[str, Any]) -> None:
        """Close a run with its final status and where each model's weights came from (trained or cache)."""
        with self._writing():
            self.db.execute(
                "UPDATE runs SET status = ?, finished_at = ?, weights = ? WHERE id = ?",
                (status, _now(), json.dumps(weights, sort_keys=True), run_id),
            )

    def run(self, run_id: str | None = None) -> Run:
        """One run's record; the latest run when ``run_id`` is None."""
        if run_id is None:
            row = self.db.execute("SELECT * FROM runs ORDER BY started_at DESC, rowid DESC LIMIT 1").fetchone()
        else:
            row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            known = [r[0] for r in self.db.execute("SELECT id FROM runs ORDER BY started_at DESC LIMIT 5")]
            if run_id is None:
                raise StoreError(f"no run in {self.path} yet; run `arena run SCENARIO --results {self.results_dir}`")
            raise StoreError(f"no run {run_id!r} in {self.path} (latest: {', '.join(known) or 'none'})")
        decoded = ("status", "weights", "classes", "expected", "runtime")
        fields = {k: row[k] for k in row.keys() if k in Run.__dataclass_fields__ and k not in decoded}
        status = row["status"]
        if status == "running" and not _alive(_get(row, "pid", None), _get(row, "host", None)):
            status = "interrupted"  # as a writable open would record it
        return Run(**fields, status=status, threat=ThreatModel(row["norm"], row["eps"]),
                   weights=json.loads(row["weights"]), classes=json.loads(_get(row, "classes", "[]")),
                   expected=[tuple(e) for e in json.loads(_get(row, "expected", "[]"))],
                   runtime=json.loads(_get(row, "runtime", "{}")))

    def runs(self, scenario: str | None = None, scenario_digest: str | None = None) -> list[Run]:
        """Runs, latest first, optionally only those of one scenario name or one exact scenario file."""
        query, args = "SELECT id FROM runs WHERE 1", []
        for column, value in (("scenario", scenario), ("scenario_digest", scenario_digest)):
            if value is not None:
                query += f" AND {column} = ?"
                args.append(value)
        ids = [row[0] for row in self.db.execute(query + " ORDER BY started_at DESC, rowid DESC", args)]
        return [self.run(run_id) for run_id in ids]

    def matchups(self, run_id: str) -> list[Matchup]:
        """Every matchup recorded for ``run_id``, in the order they were played."""
        rows = self.db.execute("SELECT * FROM matchups WHERE run_id = ? ORDER BY id", (run_id,)).fetchall()
        return [_matchup(row) for row in rows]

    def find(self, key: str) -> Matchup | None:
        """The latest finished (not crashed) matchup with this key, marked with the run it was first computed in."""
        row = self.db.execute(
            "SELECT * FROM matchups WHERE key = ? AND status != 'error' ORDER BY id DESC LIMIT 1", (key,)
        ).fetchone()
        if row is None:
            return None
        found = _matchup(row)
        found.reused_from = row["reused_from"] or row["run_id"]
        return found

    def close(self) -> None:
        self.db.close()
