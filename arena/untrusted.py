"""The boundary every file from elsewhere crosses: the limits, stated once, and the checks the readers share.

Image folders, ``.npz`` archives, checkpoints, results stores (merged or boarded) and imported JSON are untrusted:
each reader validates before any work and ends bad input in one ``ArenaError`` line naming the file, the field and
the fix. Nothing read from such a file becomes a path unless it matches ``SAFE_NAME``, and every output path is
checked to stay inside the folder asked for.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from arena.errors import ArenaError
from arena.records import Status
from arena.tables import MIGRATIONS, SCHEMA

#: Pixels of one image file (Pillow's ``MAX_IMAGE_PIXELS``): above, a decompression bomb is refused.
MAX_IMAGE_PIXELS = 25_000_000
#: Bytes of one PNG text chunk, and of all of an image's text chunks (Pillow's ``MAX_TEXT_CHUNK``, ``MAX_TEXT_MEMORY``).
MAX_TEXT_CHUNK = 1 << 20
MAX_TEXT_MEMORY = 8 << 20
#: Bytes of one array of an ``.npz`` archive, as its header claims it (checked before it is read).
MAX_ARRAY_BYTES = 4 << 30
#: Classes a data set may have (a label of 2**40 would otherwise size the model's last layer).
MAX_CLASSES = 100_000
#: Bytes of an imported JSON file, and how deeply its arrays and objects may nest.
MAX_JSON_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
#: A name from data (run id, data set) that may become part of a path: letters, digits, ``_ . + -``, at most 128
#: characters, starting with a letter or digit (so never ``..``, never absolute, never hidden).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")


def one_line(text: object, limit: int = 160) -> str:
    """``text`` (an exception's message, a value from a file) on one line, at most ``limit`` characters."""
    return " ".join(str(text).split())[:limit]


def safe_name(value: object, where: str, field: str) -> str:
    """``value`` when it is a name that can safely be part of a path, else one ``ArenaError`` line."""
    if isinstance(value, str) and SAFE_NAME.fullmatch(value):
        return value
    raise ArenaError(f"{where}: field {field!r} is {one_line(value, 80)!r}, which cannot name a file; it must be "
                     "letters, digits and _ . + - (at most 128, starting with a letter or digit): fix or remove that "
                     "entry")


def child(root: Path, *parts: str) -> Path:
    """``root/part/...`` for safe names ``parts``, refused when it would lie outside ``root`` (through a link)."""
    for part in parts:
        safe_name(part, str(root), "path part")
    path = Path(root).joinpath(*parts)
    base = Path(root).resolve()
    if not path.resolve().is_relative_to(base):
        raise ArenaError(f"{path}: leads outside {root} (a link to {path.resolve()}); remove the link or pass another "
                         "--out folder")
    return path


def finite(value: object, where: str, field: str, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a finite float within ``[low, high]``, else one ``ArenaError`` line."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        bounds = f" within [{low:g}, {high:g}]" if math.isfinite(low) or math.isfinite(high) else ""
        raise ArenaError(f"{where}: field {field!r} is {str(value)[:40]!r}; expected a finite number{bounds}")
    return float(value)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is beyond the range of a float")
    return value


def _depth(value: object) -> int:
    """How deeply ``value``'s lists and dicts nest (iteratively: no recursion limit is reached)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack += [(v, level + 1) for v in (item.values() if isinstance(item, dict) else item)]
    return deepest


def loads(text: str, where: str, field: str | None = None) -> Any:
    """JSON text (a file's, or a ``field``'s) as Python, refusing NaN, infinities, numbers beyond a float and
    nesting deeper than ``MAX_JSON_DEPTH``."""
    subject = f"{where}: " + (f"field {field!r} is " if field else "")
    deep = f"{subject}JSON nested deeper than {MAX_JSON_DEPTH} levels; flatten it"
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_float)
    except RecursionError:
        raise ArenaError(deep) from None
    except json.JSONDecodeError as exc:
        raise ArenaError(f"{subject}not valid JSON (line {exc.lineno}: {exc.msg}); fix or remove it") from None
    except (ValueError, TypeError) as exc:
        raise ArenaError(f"{subject}not valid JSON ({one_line(exc, 80)}); fix or remove it") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ArenaError(deep)
    return value


def read_json(path: Path) -> Any:
    """A JSON file of at most ``MAX_JSON_BYTES``, parsed by ``loads``."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ArenaError(f"{path}: {size:,} bytes, more than the {MAX_JSON_BYTES:,} a JSON file may have; pass "
                             "the model-info file itself")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ArenaError(f"{path}: cannot be read ({one_line(exc)}); pass a UTF-8 JSON file") from None
    return loads(text, str(path))


#: The statuses a store may record, per table.
RUN_STATUSES = ("running", "complete", "interrupted", "failed")
MATCHUP_STATUSES = tuple(status.value for status in Status)


def _number(value: object) -> bool:
    return value is None or isinstance(value, int | float) and math.isfinite(value)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


#: The keys of a matchup's nested checks, each a number unless the check recorded an ``error`` instead.
_NESTED_CHECKS = {"convergence": {"late_rise", "rise", "robust", "calls"}, "unconstrained": {"broken", "checked"},
                  "binarization": {"tested", "setup_failed", "passed"}}


#: Checks that are counts or shares whenever present (read with a default of 0, never None).
_COUNTED_CHECKS = ("zero_gradient", "silent_success", "unstable", "checked")


def _checks(value: object) -> bool:
    """A matchup's ``checks``: numbers (or flags), and nested checks holding their numbers or an error."""
    if not isinstance(value, dict) or any(value.get(k) is None for k in _COUNTED_CHECKS if k in value) \
            or (value.get("zero_gradient") and value.get("checked") is None):
        return False
    for key, item in value.items():
        if isinstance(item, dict):
            need = _NESTED_CHECKS.get(key, set())
            if "error" not in item and not (need <= item.keys() and all(_number(item[k]) for k in need)):
                return False
            if not all(_number(v) or isinstance(v, str) for v in item.values()):
                return False
        elif not _number(item):
            return False
    return True


def _gradient(value: object) -> bool:
    """A matchup's ``gradient``: which stages were crossed how, its transfer source, its EOT draws."""
    return isinstance(value, dict) and all(_strings(value[k]) for k in ("bpda", "masked", "randomized") if k in value) \
        and isinstance(value.get("source", ""), str) and type(value.get("eot_samples", 1)) is int


def _weights(value: object) -> bool:
    """A run's ``weights``: per model/defense, a record whose key and source are text."""
    return isinstance(value, dict) and all(isinstance(v, dict) and all(
        isinstance(v.get(k, ""), str) for k in ("key", "source")) for v in value.values())


#: The JSON columns of a store and what each must decode to.
_JSON_COLUMNS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "runs": {"weights": _weights, "classes": _strings, "expected": lambda v: isinstance(v, list) and all(
        _strings(e) and len(e) == 3 for e in v), "runtime": lambda v: isinstance(v, dict) and all(
        isinstance(x, str | bool | int | float) or x is None for x in v.values())},
    "matchups": {"params": lambda v: isinstance(v, dict) and isinstance(v.get("attack", {}), dict),
                 "gradient": _gradient, "checks": _checks, "cascade_after": _strings},
    "examples": {"shape": lambda v: isinstance(v, list) and 1 <= len(v) <= 4 and all(
        isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 1 << 14 for n in v)},
}


def _required_columns() -> dict[str, set[str]]:
    """The columns every reader needs: those of the first schema (later ones are read with their defaults)."""
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    found = {t: {r[1] for r in db.execute(f'PRAGMA table_info("{t}")')} for t in ("runs", "matchups", "examples")}
    db.close()
    for added in MIGRATIONS.values():
        for table, column in added:
            found[table].discard(column.split()[0])
    return found


def check_store(db: sqlite3.Connection, path: Path, version_max: int) -> None:
    """Refuse, in one line, a store that is damaged (``PRAGMA integrity_check``), of an unknown schema, missing a
    column every reader needs, or holding a value no arena writes: an unsafe run id or data set name, malformed
    JSON, a number out of range, or a finished matchup without its per-sample results."""
    fix = "it is damaged or was edited: use the original copy, or leave it out"
    try:
        _check_whole(db, path, version_max, fix)
    except (sqlite3.Error, UnicodeDecodeError) as exc:  # a damaged file fails as either, at any read
        raise ArenaError(f"{path}: cannot be read ({one_line(exc)}); {fix}") from None


def _check_whole(db: sqlite3.Connection, path: Path, version_max: int, fix: str) -> None:
    verdict = db.execute("PRAGMA integrity_check(1)").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if verdict != "ok":
        raise ArenaError(f"{path}: fails SQLite's integrity check ({one_line(verdict)}); {fix}")
    if not 1 <= version <= version_max:
        raise ArenaError(f"{path}: store schema version {version} is not one this arena knows (1 to {version_max}); "
                         f"{fix}")
    wanted = _required_columns()
    for table in ("runs", "matchups", "examples"):
        if table not in tables:
            if table == "examples":
                continue  # a store older than kept examples
            raise ArenaError(f"{path}: has no {table} table; {fix}")
        have = {r[1] for r in db.execute(f'PRAGMA table_info("{table}")')}
        missing = sorted(wanted[table] - have)
        if missing:
            raise ArenaError(f"{path}: table {table} lacks column(s) {', '.join(missing)}, which every store has; "
                             f"{fix}")
    _check_rows(db, path, fix, tables)


def _json_fields(row: sqlite3.Row, table: str, where: str) -> None:
    for column, valid in _JSON_COLUMNS[table].items():
        if column in row.keys():
            text = row[column]
            value = loads(text, where, column) if isinstance(text, str) else None
            if not valid(value):
                raise ArenaError(f"{where}: field {column!r} is {str(text)[:60]!r}, not what the arena writes "
                                 "there; use the original copy of the store, or leave it out")


#: Columns that hold text (None allowed for those marked) and numbers (None allowed for those marked), per table.
_TEXT = {"runs": ("scenario", "scenario_path", "scenario_digest", "scenario_text", "arena_version", "device",
                  "started_at", "finished_at?", "host?", "data_fingerprint?", "origin?"),
         "matchups": ("finished_at", "suite", "detail?", "reused_from?"), "examples": ()}
_NUMBERS = {"runs": ("pid?",), "matchups": ("wall_time_s", "mean_norm?", "max_norm?", "forward_passes?",
                                            "backward_passes?", "attack_time_s?"),
            "examples": ("sample", "label", "predicted_before", "predicted_after", "confidence_before",
                         "confidence_after")}

_WHOLE = {"pid", "forward_passes", "backward_passes", "sample", "label", "predicted_before", "predicted_after"}


def _typed_columns(row: sqlite3.Row, table: str, where: str, fix: str) -> None:
    for spec in _TEXT[table] + _NUMBERS[table]:
        column, nullable = spec.rstrip("?"), spec.endswith("?")
        if column not in row.keys() or (nullable and row[column] is None):
            continue
        value = row[column]
        if spec in _TEXT[table] and not isinstance(value, str):
            raise ArenaError(f"{where}: field {column!r} is {str(value)[:40]!r}, not text; {fix}")
        if spec in _NUMBERS[table]:
            finite(value, where, column, 0)
            if column in _WHOLE and not isinstance(value, int):
                raise ArenaError(f"{where}: field {column!r} is {value!r}, not a whole number; {fix}")


def _check_rows(db: sqlite3.Connection, path: Path, fix: str, tables: set[str]) -> None:
    db.row_factory = sqlite3.Row
    for run in db.execute("SELECT * FROM runs"):
        where = f"{path}: run {str(run['id'])[:80]!r}"
        safe_name(run["id"], where, "id")
        safe_name(run["dataset"], where, "dataset")
        _typed_columns(run, "runs", where, fix)
        if run["norm"] not in ("linf", "l2") or run["status"] not in RUN_STATUSES:
            raise ArenaError(f"{where}: norm {run['norm']!r} or status {run['status']!r} is not one the arena "
                             f"writes; {fix}")
        finite(run["eps"], where, "eps", 0)
        if not isinstance(run["samples"], int) or run["samples"] < 0 or not isinstance(run["seed"], int):
            raise ArenaError(f"{where}: field 'samples' or 'seed' is not a whole number; {fix}")
        _json_fields(run, "runs", where)
    runs = {r[0]: r[1] for r in db.execute("SELECT id, samples FROM runs")}
    for m in db.execute("SELECT * FROM matchups"):
        where = f"{path}: matchup {m['id']} of run {str(m['run_id'])[:80]!r}"
        if m["run_id"] not in runs or m["status"] not in MATCHUP_STATUSES:
            raise ArenaError(f"{where}: its run is missing or its status {m['status']!r} unknown; {fix}")
        if not all(isinstance(m[k], str) for k in ("model", "defense", "attack", "key")):
            raise ArenaError(f"{where}: model, defense, attack and key must be text; {fix}")
        _json_fields(m, "matchups", where)
        _typed_columns(m, "matchups", where, fix)
        for column in ("clean_accuracy", "robust_accuracy", "attack_success_rate"):
            if m[column] is not None:
                finite(m[column], where, column, 0, 1)
        if m["status"] != "ok":
            continue
        samples = m["samples"]
        if not isinstance(samples, int) or samples < 1:
            raise ArenaError(f"{where}: an ok matchup of {samples!r} samples measured nothing; {fix}")
        for column in ("clean_correct", "robust_correct") + (("attacked",) if "attacked" in m.keys() else ()):
            blob = m[column]
            if column != "attacked" and blob is None:
                raise ArenaError(f"{where}: field {column!r} is empty: an ok matchup without its per-sample results "
                                 f"cannot be compared or ranked; {fix}")
            if blob is not None and (not isinstance(blob, bytes) or len(blob) != samples
                                     or blob.strip(b"\x00\x01")):
                raise ArenaError(f"{where}: field {column!r} is not {samples} per-sample 0/1 bytes; {fix}")
    if "examples" in tables:
        for e in db.execute("SELECT rowid, * FROM examples"):
            where = f"{path}: example {e['rowid']}"
            _json_fields(e, "examples", where)
            _typed_columns(e, "examples", where, fix)
            codec = e["codec"] if "codec" in e.keys() else "raw"
            size = 4 * math.prod(json.loads(e["shape"]))  # float32 values
            for column in ("clean", "adversarial"):
                if _decoded_size(e[column], codec, size) != size:
                    raise ArenaError(f"{where}: field {column!r} is not a {codec} image of shape {e['shape']}; {fix}")


def _decoded_size(blob: object, codec: object, size: int) -> int | None:
    """How many bytes an example's image decodes to, reading at most one byte beyond ``size`` (no zlib bomb)."""
    if not isinstance(blob, bytes) or codec not in ("raw", "zlib"):
        return None
    if codec == "raw":
        return len(blob)
    try:
        return len(zlib.decompressobj().decompress(blob, size + 1))
    except zlib.error:
        return None


def check_split(images: Any, labels: Any, classes: int, where: str) -> None:
    """Refuse, in one line, a data set split that no measurement can come from: no images, images outside [0, 1]
    (0-255 values), labels that are not one integer class index per image below ``classes``, or one class only."""
    import torch

    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ArenaError(f"{where}: load returned {type(images).__name__} and {type(labels).__name__}; expected two "
                         "torch tensors (images, labels)")
    if not 2 <= classes <= MAX_CLASSES:
        raise ArenaError(f"{where}: {classes} class(es); with fewer than two every prediction is right (no accuracy "
                         f"means anything) and more than {MAX_CLASSES:,} are beyond the limit: fix num_classes")
    if images.ndim != 4 or not len(images) or not images.is_floating_point():
        raise ArenaError(f"{where}: images of shape {tuple(images.shape)} and dtype {images.dtype}; expected at "
                         "least one float image, [N, C, H, W]")
    if labels.shape == (len(images), 1):
        raise ArenaError(f"{where}: labels of shape {tuple(labels.shape)}; expected [{len(images)}]: flatten them "
                         "(labels.reshape(-1))")
    if labels.shape != (len(images),) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ArenaError(f"{where}: labels of shape {tuple(labels.shape)} and dtype {labels.dtype}; expected "
                         f"[{len(images)}] integer class indices (float labels are not rounded for you)")
    low, high = float(images.min()), float(images.max())
    if not (math.isfinite(low) and math.isfinite(high)) or low < 0 or high > 1:
        hint = ": divide 0-255 pixel values by 255" if high > 1 and math.isfinite(high) else ""
        raise ArenaError(f"{where}: image values from {low:g} to {high:g}; expected [0, 1]{hint}")
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise ArenaError(f"{where}: labels from {int(labels.min())} to {int(labels.max())}; expected class indices 0 "
                         f"to {classes - 1}")
