"""The results store: one SQLite file per results folder; each matchup is written in its own transaction."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from arena.errors import StoreError
from arena.records import Example, Matchup, Run, Verification
from arena.tables import SCHEMA_VERSION, create_or_migrate, insert, refuse_newer
from arena.threat import ThreatModel
from arena.untrusted import check_store, one_line
from arena.version import __version__

DB_NAME = "arena.db"


def results_folder(path: Path) -> Path:
    """The results folder ``path`` names: the folder itself, or the one holding it when it is its ``.db`` file."""
    path = Path(path)
    return path.parent if path.suffix == ".db" and path.is_file() else path


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


#: The verification fields stored as JSON.
_DECODED = ("samples", "keys", "differing")


def _example(row: sqlite3.Row) -> Example:
    """A kept example from its row: the images decoded with the row's codec."""
    shape = json.loads(row["shape"])
    images = {k: _decode(row[k], _get(row, "codec", "raw"), shape) for k in ("clean", "adversarial")}
    return Example(sample=row["sample"], label=row["label"], **images, predicted_before=row["predicted_before"],
                   predicted_after=row["predicted_after"], confidence_before=row["confidence_before"],
                   confidence_after=row["confidence_after"])


class Store:
    """Runs and their matchups in ``<results>/arena.db``.

    Opened for writing (``arena run``) the store is created in one transaction, migrated in place, and runs whose
    process is gone are marked ``interrupted``. Opened ``readonly`` (``leaderboard``, ``report``) it is never
    written, its journal mode is left alone and an older schema is read as it is, so a read-only copy works.
    """

    def __init__(self, results_dir: Path, readonly: bool = False, file: Path | None = None) -> None:
        self.results_dir = Path(results_dir)
        self.path = Path(file) if file else self.results_dir / DB_NAME
        self.readonly = readonly
        self._check_files()
        try:
            if readonly:
                self.db = self._connect_readonly()
                refuse_newer(self.path, self.db.execute("PRAGMA user_version").fetchone()[0])
                return
            self.db = sqlite3.connect(self.path)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            create_or_migrate(self.db, self.path)
            self._mark_interrupted()
        except (sqlite3.Error, UnicodeDecodeError) as exc:  # a damaged file fails as either
            raise StoreError(f"{self.path}: cannot be {'read' if readonly else 'opened for writing'} "
                             f"({one_line(exc)}); "
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

    def _mark_interrupted(self) -> None:
        """Runs left ``running`` by a process that is gone (killed, crashed) become ``interrupted``."""
        rows = self.db.execute("SELECT id, pid, host FROM runs WHERE status = 'running'").fetchall()
        dead = [r["id"] for r in rows if not _alive(r["pid"], r["host"])]
        with self.db:
            self.db.executemany("UPDATE runs SET status = 'interrupted' WHERE id = ?", [(d,) for d in dead])

    @classmethod
    def open_existing(cls, results_dir: Path) -> Store:
        """Open, read-only, a results folder that must already hold a store (or a store's ``.db`` file itself), and
        check it whole before anything reads it (``arena.untrusted.check_store``)."""
        file = Path(results_dir) if Path(results_dir).suffix == ".db" and Path(results_dir).is_file() else None
        results_dir = results_folder(results_dir)
        if not (file or results_dir / DB_NAME).exists():
            raise StoreError(f"no results store at {results_dir / DB_NAME}; run `arena run SCENARIO` first")
        store = cls(results_dir, readonly=True, file=file)
        with ExitStack() as closing:
            closing.callback(store.close)  # unless the store passes every check
            try:
                if not store.has_table("runs"):  # an empty file, or a store whose creation never finished
                    raise StoreError(f"{store.path} holds no arena results (no runs table); run `arena run SCENARIO "
                                     f"--results {results_dir}` first, or pass another --results folder")
            except (sqlite3.Error, UnicodeDecodeError) as exc:
                raise StoreError(f"{store.path}: cannot be read ({one_line(exc)}); pass another --results folder"
                                 ) from None
            check_store(store.db, store.path, SCHEMA_VERSION)
            closing.pop_all()
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
        with self.writing():
            insert(self.db, "runs", {
                "id": run_id, "scenario": scenario.name, "scenario_path": scenario.path,
                "scenario_digest": scenario.digest, "scenario_text": scenario.text, "arena_version": __version__,
                "seed": scenario.seed, "norm": threat.norm, "eps": threat.eps, "dataset": scenario.dataset.name,
                "samples": samples, "device": device, "status": "running", "started_at": _now(),
                "classes": json.dumps(list(classes)), "expected": json.dumps([list(e) for e in expected]),
                "pid": os.getpid(), "host": socket.gethostname(), "data_fingerprint": data_fingerprint,
                "runtime": json.dumps(runtime or {}, sort_keys=True),
            })
        return run_id

    @contextmanager
    def writing(self) -> Iterator[None]:
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
        with self.writing():
            matchup_id = insert(self.db, "matchups", {
                "run_id": run_id, "model": m.model, "defense": m.defense, "attack": m.attack,
                "params": json.dumps(m.params, sort_keys=True), "gradient": json.dumps(m.gradient, sort_keys=True),
                "key": m.key, "reused_from": m.reused_from, "status": m.status.value, "detail": m.detail,
                "samples": m.samples, "clean_accuracy": m.clean_accuracy, "robust_accuracy": m.robust_accuracy,
                "attack_success_rate": m.attack_success_rate, "mean_norm": m.mean_norm, "max_norm": m.max_norm,
                "wall_time_s": m.wall_time_s, "clean_correct": _pack(m.clean_correct),
                "robust_correct": _pack(m.robust_correct), "finished_at": _now(), "attacked": _pack(m.attacked),
                "forward_passes": m.forward_passes, "backward_passes": m.backward_passes,
                "checks": json.dumps(m.checks, sort_keys=True), "suite": m.suite,
                "cascade_after": json.dumps(m.cascade_after), "attack_time_s": m.attack_time_s,
            })
            for e in m.examples:
                insert(self.db, "examples", {
                    "matchup_id": matchup_id, "sample": e.sample, "label": e.label,
                    "shape": json.dumps(list(e.clean.shape)), "clean": _encode(e.clean),
                    "adversarial": _encode(e.adversarial), "predicted_before": e.predicted_before,
                    "predicted_after": e.predicted_after, "confidence_before": e.confidence_before,
                    "confidence_after": e.confidence_after, "codec": "zlib",
                })

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
        return [_example(row) for row in rows]

    def add_verification(self, v: Verification) -> None:
        """Record an ``arena verify`` mark (a mark with the same id, merged twice, is kept once)."""
        if self.db.execute("SELECT 1 FROM verifications WHERE id = ?", (v.id,)).fetchone():
            return
        with self.writing():
            insert(self.db, "verifications", {
                **{k: v.__dict__[k] for k in Verification.__dataclass_fields__},
                **{k: json.dumps(v.__dict__[k]) for k in _DECODED}})

    def verifications(self) -> list[Verification]:
        """Every verification mark, oldest first (none in a store older than verification)."""
        if not self.has_table("verifications"):
            return []
        return [Verification(**{k: json.loads(row[k]) if k in _DECODED else row[k] for k in row.keys()})
                for row in self.db.execute("SELECT * FROM verifications ORDER BY verified_at, rowid")]

    def finish_run(self, run_id: str, status: str, weights: dict[str, Any]) -> None:
        """Close a run with its final status and where each model's weights came from (trained or cache)."""
        with self.writing():
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
        """Close the database connection (``with Store(...) as store:`` does it on leaving the block)."""
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
