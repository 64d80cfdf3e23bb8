"""Adversarial examples out of a run: the successful examples each matchup kept (``save_examples``), exported as
``.npz`` (exact float32 values that load back bit for bit) or as a PNG gallery. Every example is audited against the
run's threat model again before it is written, so an export never carries an example the arena would not count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from arena.audit import audit
from arena.errors import ArenaError
from arena.records import Example, Matchup, Run, Status
from arena.registry import unknown_name_message
from arena.report import gallery
from arena.standing import standing
from arena.store import Store
from arena.verify import behind, find_entry

FORMATS = ("npz", "png")
#: Rows of a PNG gallery unless ``--limit`` says otherwise (a picture of thousands of rows helps nobody).
GALLERY_ROWS = 16


def select(store: Store, run: Run, model: str | None = None, defense: str | None = None,
           attack: str | None = None) -> list[Matchup]:
    """The run's successful (status ``ok``) matchups matching the given names; an unknown name is refused with the
    names the run has."""
    matchups = [m for m in store.matchups(run.id) if m.status == Status.OK]
    for field, wanted in (("model", model), ("defense", defense), ("attack", attack)):
        known = sorted({getattr(m, field) for m in matchups})
        if wanted is not None and wanted not in known:
            raise ArenaError(unknown_name_message(f"{field} in run {run.id}", wanted, known))
        matchups = [m for m in matchups if wanted is None or getattr(m, field) == wanted]
    return matchups


def arrays(examples: list[Example]) -> dict[str, np.ndarray]:
    """The examples as stacked arrays, one row per example."""
    return {
        "clean": np.stack([e.clean for e in examples]).astype(np.float32, copy=False),
        "adversarial": np.stack([e.adversarial for e in examples]).astype(np.float32, copy=False),
        "sample": np.array([e.sample for e in examples], dtype=np.int64),
        "label": np.array([e.label for e in examples], dtype=np.int64),
        "predicted_before": np.array([e.predicted_before for e in examples], dtype=np.int64),
        "predicted_after": np.array([e.predicted_after for e in examples], dtype=np.int64),
        "confidence_before": np.array([e.confidence_before for e in examples], dtype=np.float64),
        "confidence_after": np.array([e.confidence_after for e in examples], dtype=np.float64),
    }


def _audited(data: dict[str, np.ndarray], run: Run, m: Matchup) -> None:
    """Refuse to export examples that break the run's threat model (a store edited by hand, say)."""
    report = audit(m.attack, torch.from_numpy(data["clean"]), torch.from_numpy(data["adversarial"]), run.threat)
    if report.violation:
        raise ArenaError(f"{m.attack} vs {m.model}+{m.defense}: the stored examples fail the audit "
                         f"({report.violation}); the store may have been altered, so nothing was exported")


def _stem(m: Matchup) -> str:
    return f"{m.model}+{m.defense}+{m.attack}".replace("/", "-")


def write_npz(data: dict[str, np.ndarray], run: Run, m: Matchup, path: Path) -> Path:
    """Write the examples (as ``arrays`` gives them) and what they came from (run, threat model, matchup, class
    names) to a compressed ``.npz``, then read it back and check every array is bit-identical."""
    meta: dict[str, Any] = {"run": run.id, "key": m.key, "model": m.model, "defense": m.defense, "attack": m.attack,
            "norm": run.threat.norm, "eps": run.threat.eps, "classes": np.array(run.classes, dtype=str)}
    np.savez_compressed(path, **{**data, **meta})
    with np.load(path, allow_pickle=False) as back:
        if not all(back[k].dtype == v.dtype and back[k].tobytes() == v.tobytes() for k, v in data.items()):
            raise ArenaError(f"{path}: did not read back bit-identical; check the disk and export again")
    return path


def export(store: Store, run: Run, matchups: list[Matchup], out: Path, fmt: str = "npz",
           limit: int | None = None) -> list[tuple[Path, int]]:
    """Write each matchup's kept examples (at most ``limit``; a PNG gallery ``GALLERY_ROWS`` by default) into
    ``out`` as ``MODEL+DEFENSE+ATTACK.npz`` or ``.png``; returns each file with its number of examples."""
    if fmt not in FORMATS:
        raise ArenaError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    limit = limit if limit is not None else GALLERY_ROWS if fmt == "png" else None
    written = []
    for m in matchups:
        examples = store.examples(m)[:limit]
        if not examples:
            continue
        data = arrays(examples)
        _audited(data, run, m)
        try:
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"{_stem(m)}.{fmt}"
            if fmt == "npz":
                write_npz(data, run, m, path)
            else:
                gallery(examples, run.classes, f"{m.attack} vs {m.model}+{m.defense} ({run.threat})", path)
        except OSError as exc:
            raise ArenaError(f"--out {out}: cannot be written ({exc.strerror}); pass a folder you can write") from None
        written.append((path, len(examples)))
    if not written:
        raise ArenaError(f"run {run.id} kept no successful adversarial example for this selection (no attack broke "
                         "a sample, or the run predates kept examples); set `save_examples: N` or `all` in the "
                         "scenario and run it again")
    return written


def export_entry(store: Store, name: str, out: Path, every: bool = False) -> tuple[Path, int, int]:
    """Write the worst-case adversarial image of each broken sample of the board entry ``name`` (the most confident
    mistake any of its attacks kept) into ``out/MODEL+DEFENSE.npz``, with the sample indices and the data fingerprint,
    as ``arena submit-examples`` reads it back. ``every``: refuse unless every broken sample has a kept image.
    Returns the file, the images written and the broken samples."""
    entry = find_entry(standing([store]), name)
    pairs = behind(store, entry)
    run = pairs[0][0]
    clean = pairs[0][1].clean
    broken = clean & ~np.logical_and.reduce([m.robust for _, m in pairs])
    best: dict[int, Example] = {}
    for _, m in pairs:
        for e in store.examples(m):
            if broken[e.sample] and e.predicted_after != e.label and (
                    e.sample not in best or e.confidence_after > best[e.sample].confidence_after):
                best[e.sample] = e
    missing = sorted(set(np.flatnonzero(broken).tolist()) - set(best))
    if missing and (every or not best):
        raise ArenaError(f"{entry.name}: {len(missing)} of its {int(broken.sum())} broken samples have no kept "
                         f"adversarial image (sample {missing[0]} first); play its scenario with `save_examples: all` "
                         "(and --fresh) to keep every one")
    chosen = [best[s] for s in sorted(best)]
    data = arrays(chosen)
    report = audit(entry.name, torch.from_numpy(data["clean"]), torch.from_numpy(data["adversarial"]), run.threat)
    if report.violation:
        raise ArenaError(f"{entry.name}: the stored examples fail the audit ({report.violation}); the store may have "
                         "been altered, so nothing was exported")
    try:
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{entry.name.replace('/', '-')}.npz"
        meta: dict[str, Any] = {"entry": entry.name, "identity": entry.identity, "norm": run.threat.norm,
                                "eps": run.threat.eps,
                "classes": np.array(run.classes, dtype=str),
                **({"data_fingerprint": run.data_fingerprint} if run.data_fingerprint else {})}
        np.savez_compressed(path, **{**data, **meta})
    except OSError as exc:
        raise ArenaError(f"--out {out}: cannot be written ({exc.strerror}); pass a folder you can write") from None
    return path, len(chosen), int(broken.sum())
