"""RobustBench interchange: each standing-board entry written as a RobustBench model-info JSON file, and such files
(RobustBench's own, or the arena's) read back as "reported" rows, shown beside the arena's measurements and never
mixed into its worst case.

RobustBench keeps one file per model at ``model_info/<dataset>/<Linf|L2>/<Name>.json`` with string percentages
(``clean_acc``, ``autoattack_acc``, optional ``external`` for a stronger attack's number) and ε as a string
(``8/255``); the norm is the folder's name. The arena's export keeps that layout and adds its provenance under
``arena``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path
from typing import Any

from arena.errors import ArenaError
from arena.standing import Entry, Threat
from arena.threat import eps_text
from arena.untrusted import child, finite, read_json, safe_name

#: RobustBench's folder name of each norm, and back.
NORM_FOLDERS = {"linf": "Linf", "l2": "L2"}
#: The fields every RobustBench model-info file has that the board needs.
REQUIRED = ("name", "dataset", "eps", "clean_acc", "autoattack_acc")


class InterchangeError(ArenaError):
    """A model-info file that cannot be read as RobustBench's format; the message names the file and field."""


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.2f}"


def model_info(entry: Entry) -> dict[str, Any]:
    """An entry as RobustBench model-info: ``autoattack_acc`` is the AutoAttack suite's number when the arena ran it
    (with ``external`` the lower best-known worst case), else the best known worst case, and a footnote says so."""
    autoattack = next((v for k, v in entry.suites.items() if k.startswith("autoattack")), None)
    info: dict[str, Any] = {
        "link": "", "name": f"{entry.model}+{entry.defense}", "authors": "",
        # the arena trains on the data set's own training split; what a pretrained checkpoint saw is unknown
        "additional_data": None if any(s.weights_source == "pretrained" for s in entry.sources) else False,
        "number_forward_passes": 1, "dataset": entry.threat.dataset, "venue": "arena",
        "architecture": entry.model, "eps": eps_text(entry.threat.eps), "clean_acc": _percent(entry.clean_accuracy),
        "reported": _percent(entry.worst_case),
        "autoattack_acc": _percent(entry.worst_case if autoattack is None else autoattack),
        "unreliable": bool(entry.flags),
    }
    if autoattack is not None and entry.worst_case is not None and entry.worst_case < autoattack:
        info["external"] = _percent(entry.worst_case)
    if autoattack is None:
        info["footnote"] = ("No AutoAttack run: autoattack_acc is the arena's best-known worst case over "
                            + ", ".join(entry.achieved_by or ["its attacks"]) + ".")
    info["arena"] = {"identity": entry.identity, "samples": entry.samples, "sample_set": entry.sample_set,
                     "norm": entry.threat.norm, "eps": entry.threat.eps, "achieved_by": entry.achieved_by,
                     "suites": entry.suites, "passes_per_sample": entry.passes, "flags": entry.flags,
                     "verification": entry.verification, "verify": f"arena verify {entry.name}",
                     "external_attacks": entry.external, "sources": [asdict(s) for s in entry.sources]}
    return info


def export(board: dict[Threat, list[Entry]], out: Path) -> list[Path]:
    """Write every measured entry with a number into ``out/<dataset>/<Linf|L2>/<name>.json``; the name holds ε,
    weights and images, so no entry overwrites another."""
    written = []
    for threat, entries in board.items():
        for entry in entries:
            if entry.kind != "measured" or entry.worst_case is None:
                continue
            folder = child(out, threat.dataset, NORM_FOLDERS.get(threat.norm, threat.norm))
            eps = eps_text(threat.eps).replace("/", "-")
            label = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{entry.model}+{entry.defense}")[:80].lstrip("._+-") or "entry"
            name = f"{label}_eps{eps}_{entry.identity[:8]}"
            if entry.sample_set and " " not in entry.sample_set:
                name += f"_{entry.sample_set[:6]}"
            folder.mkdir(parents=True, exist_ok=True)
            path = child(folder, re.sub(r"[^A-Za-z0-9_.+-]", "_", name)[:123] + ".json")
            path.write_text(json.dumps(model_info(entry), indent=2) + "\n", encoding="utf-8")
            written.append(path)
    return written


def _number(path: Path, info: dict[str, Any], field: str) -> float | None:
    """A percentage field (RobustBench writes strings such as ``"59.53"``) as a fraction; a value outside
    [0, 100] was never measured and is refused."""
    value = info.get(field)
    if value in (None, ""):
        return None
    try:
        number = float(value) if isinstance(value, str) else value
        return finite(number, str(path), field, 0, 100) / 100
    except (ArenaError, ValueError):
        raise InterchangeError(f"{path}: field {field!r} is {str(value)[:40]!r}, not a percentage from 0 to 100; "
                               "write it as \"59.53\"") from None


def _text(path: Path, info: dict[str, Any], field: str) -> str:
    """A text field (at most 200 characters)."""
    value = info.get(field)
    if not isinstance(value, str) or not 0 < len(value) <= 200:
        raise InterchangeError(f"{path}: field {field!r} is {str(value)[:40]!r}; expected text of 1 to 200 "
                               "characters")
    return value


def _eps(path: Path, info: dict[str, Any], arena: dict[str, Any]) -> float:
    """ε from ``arena.eps`` (a number) or RobustBench's ``eps`` (``"8/255"``, ``"0.5"`` or a number)."""
    value = arena["eps"] if "eps" in arena else info["eps"]
    field = "arena.eps" if "eps" in arena else "eps"
    try:
        if isinstance(value, str):
            value = float(Fraction(value.strip()[:40]))
        return finite(value, str(path), field, 0, 1e6)
    except (ArenaError, ValueError, ZeroDivisionError):
        raise InterchangeError(f"{path}: field {field!r} is {str(value)[:40]!r}; write it as \"8/255\" or \"0.5\""
                               ) from None


def read_reported(path: Path) -> Entry:
    """One model-info file as a reported row; its norm is the ``arena.norm`` it carries, else its folder's name.
    Every field is checked (types, ranges, nesting, size: ``arena.untrusted``) before it is used."""
    try:
        info = read_json(path)
    except InterchangeError:
        raise
    except ArenaError as exc:
        raise InterchangeError(f"{exc}; fix the file or leave it out of --reported") from None
    if not isinstance(info, dict):
        raise InterchangeError(f"{path}: holds a JSON {type(info).__name__}, not a model-info object; see "
                               "RobustBench's model_info/<dataset>/<threat>/<Name>.json")
    missing = [f for f in REQUIRED if f not in info]
    if missing:
        raise InterchangeError(f"{path}: missing field(s) {', '.join(missing)} that RobustBench model-info has; "
                               "add them or leave the file out of --reported")
    arena: dict[str, Any] = info["arena"] if isinstance(info.get("arena"), dict) else {}
    folders = {v.lower(): k for k, v in NORM_FOLDERS.items()}
    norm = arena.get("norm") or folders.get(path.parent.name.lower())
    if norm is None:
        raise InterchangeError(f"{path}: cannot tell the norm: put the file in a Linf/ or L2/ folder as RobustBench "
                               "does")
    if norm not in NORM_FOLDERS:
        raise InterchangeError(f"{path}: field 'arena.norm' is {str(norm)[:20]!r}; expected linf or l2")
    try:
        dataset = safe_name(info["dataset"], str(path), "dataset")
    except ArenaError as exc:
        raise InterchangeError(str(exc)) from None
    eps = _eps(path, info, arena)
    samples = arena.get("samples", 0)
    if isinstance(samples, bool) or not isinstance(samples, int) or not 0 <= samples <= 1 << 40:
        raise InterchangeError(f"{path}: field 'arena.samples' is {str(samples)[:20]!r}; expected a whole number ≥ 0")
    external, autoattack = _number(path, info, "external"), _number(path, info, "autoattack_acc")
    number = external if external is not None else autoattack  # RobustBench ranks by ``external`` when present
    flags = ["reported, not measured here: not part of any worst case"]
    if info.get("unreliable"):
        flags.append("marked potentially unreliable by its source")
    if info.get("footnote"):
        flags.append(str(info["footnote"])[:500])
    architecture = _text(path, info, "architecture") if info.get("architecture") else None
    name = _text(path, info, "name")
    name = f"{name} ({architecture})" if architecture else name
    return Entry(Threat.of(dataset, norm, eps), name, "-", kind="reported",
                 clean_accuracy=_number(path, info, "clean_acc"), worst_case=number, samples=samples, flags=flags,
                 reported={"file": str(path), **{k: v for k, v in info.items() if k != "arena"}})


def read_all(paths: list[Path]) -> list[Entry]:
    """The reported rows of files and folders (every ``*.json`` under a folder); a missing path is refused."""
    files = []
    for path in paths:
        if path.is_dir():
            files += sorted(path.rglob("*.json"))
        elif path.is_file():
            files.append(path)
        else:
            raise InterchangeError(f"--reported {path}: no such file or folder; pass RobustBench model-info .json "
                                   "files or a folder of them")
    return [read_reported(f) for f in files]
