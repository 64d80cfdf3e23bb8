"""Weights files from elsewhere: what is wrong with one, said in one line before any work, and what identifies it.

A PyTorch checkpoint is a zip archive (``torch.save`` since 1.6) or an older bare pickle. A download that went wrong
leaves an HTML page (Google Drive's virus-scan or quota page, RobustBench #177) or a truncated file, which torch
would only report deep inside ``torch.load``.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch

_ZIP, _PICKLE = b"PK\x03\x04", 0x80
_HTML = (b"<!doctype html", b"<html", b"<head", b"<?xml")


def weights_problem(path: Path) -> str | None:
    """Why ``path`` is no loadable checkpoint (missing, empty, an HTML page, truncated, holding objects that loading
    would have to build or run), else None. Reads the file's head, and a zip archive's directory; a bare pickle is
    loaded with ``weights_only`` (which builds nothing)."""
    if not path.is_file():
        return f"{path} does not exist"
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(512)
    if not head:
        return f"{path} is empty (0 bytes): a download that failed; delete it and download it again"
    if head.lstrip().lower().startswith(_HTML):
        return (f"{path} is an HTML page ({size:,} bytes), not weights: the download saved a web page (Google Drive's "
                "virus-scan or quota page, RobustBench #177); delete it and download it again, or save the file "
                "from a browser to that path")
    if head.startswith(_ZIP):
        try:  # the archive's directory is at its end: a truncated file has none
            zipfile.ZipFile(path).close()
        except (zipfile.BadZipFile, OSError) as exc:
            return _damaged(path, size, exc)
    elif head[0] != _PICKLE:
        return f"{path} is not a PyTorch checkpoint (it starts with {head[:16]!r}); save one with torch.save"
    try:
        read_state(path)
    except pickle.UnpicklingError:
        return (f"{path} is refused: it holds objects beyond tensors (loading it would build them or run code); "
                "save a plain state_dict with torch.save(model.state_dict(), path)")
    except (EOFError, RuntimeError, OSError, ValueError, KeyError) as exc:
        return _damaged(path, size, exc)
    return None


def read_state(path: Path) -> object:
    """The checkpoint's contents, loaded with ``weights_only`` (tensors and plain containers; no object is built and
    no code runs); a zip checkpoint is memory-mapped, so checking a large one reads little."""
    with path.open("rb") as file:
        zipped = file.read(4) == _ZIP
    return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)


def state_dict_problem(path: Path, net: torch.nn.Module, shapes_for: str | None = None) -> str | None:
    """Why the checkpoint at ``path`` is not a ``state_dict`` (or ``{"state_dict": ...}``) with the keys of
    ``net`` (and, given ``shapes_for``, what the net is built for, its tensors' shapes), else None: checked with the
    scenario, before any work."""
    state = read_state(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return (f"{path} holds a {type(state).__name__}, not a state_dict of tensors; save one with "
                "torch.save(model.state_dict(), path)")
    wanted, found = set(net.state_dict()), set(state)
    missing, unexpected = sorted(wanted - found), sorted(found - wanted)
    if missing or unexpected:
        return (f"{path} is not a state_dict of this architecture (missing {', '.join(missing[:3]) or 'none'}; "
                f"unexpected {', '.join(map(str, unexpected[:3])) or 'none'}); save it from that architecture")
    wanted_shapes = net.state_dict()
    for key, tensor in state.items() if shapes_for else ():
        if tuple(tensor.shape) != tuple(wanted_shapes[key].shape):
            return (f"{path}: {key} has shape {tuple(tensor.shape)}, but this architecture for {shapes_for} needs "
                    f"{tuple(wanted_shapes[key].shape)}; use the checkpoint made for this data set, or the data set "
                    "it was trained on")
    return None


def _damaged(path: Path, size: int, exc: Exception) -> str:
    why = " ".join(str(exc).split())[:160] or type(exc).__name__
    return f"{path} is truncated or damaged ({size:,} bytes; {why}); delete it and download it again"


def files_hash(paths: Iterable[Path]) -> str:
    """The SHA-256 of the files' bytes in order: what a pretrained model's ``identity()`` reports."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()

