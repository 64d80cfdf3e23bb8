"""Adversarial examples from outside the arena (``arena submit-examples``): a file of images for an entry's samples,
read without any loader that can run code, audited image by image against the threat model and the entry's own clean
images, classified by the entry's model and recorded as the attack ``external:NAME`` with the file's SHA-256.

Accepted files: ``.npz`` (``numpy.load`` with ``allow_pickle=False``) and ``.safetensors`` holding ``adversarial``
(N × C × H × W floats in [0, 1]) and ``sample`` (the N sample indices), optionally ``data_fingerprint``; and
RobustBench's external-evaluation ``.pt``, a tensor of the first N test images' adversarial versions, read with
``torch.load(weights_only=True)``. The arena's own export (``arena examples --entry``) is such an ``.npz``.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import time
from pathlib import Path

import numpy as np
import torch

from arena.audit import TOLERANCE
from arena.engine import predict
from arena.errors import ArenaError
from arena.records import Example, Matchup, Run, Status
from arena.standing import standing
from arena.store import Store
from arena.training import content_key
from arena.verify import Rebuilt, behind, find_entry

SUFFIXES = (".npz", ".safetensors", ".pt", ".pth")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class ExamplesError(ArenaError):
    """A submitted file that cannot be counted; the one-line message names the file, what is wrong and the fix."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """The file's arrays, read by a loader that cannot execute code."""
    pickled = (f"{path}: holds pickled objects, which the arena never loads (loading them could run code); save plain "
               "numeric arrays (numpy.savez, safetensors or torch.save of a tensor)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        if suffix == ".safetensors":
            from safetensors.numpy import load_file
            return load_file(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise ExamplesError(pickled) from None
        raise ExamplesError(f"{path}: cannot be read as {suffix} ({str(exc).splitlines()[0]}); write it with "
                            "numpy.savez, safetensors or torch.save") from None
    except pickle.UnpicklingError:
        raise ExamplesError(pickled) from None
    except Exception as exc:  # each loader's own errors: OSError, EOFError, BadZipFile, SafetensorError, ...
        raise ExamplesError(f"{path}: cannot be read as {suffix} ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else 'corrupt'}); write it with numpy.savez, "
                            "safetensors or torch.save") from None
    if isinstance(loaded, torch.Tensor):
        return {"adversarial": loaded.numpy(), "sample": np.arange(len(loaded))}
    if isinstance(loaded, dict) and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return {str(k): v.numpy() for k, v in loaded.items()}
    raise ExamplesError(f"{path}: holds a {type(loaded).__name__}; a .pt must hold one tensor of adversarial images "
                        "(RobustBench's format) or a dict of tensors with 'adversarial' and 'sample'")


def read(path: Path, clean: torch.Tensor, run: Run) -> tuple[np.ndarray, np.ndarray]:
    """The adversarial images and their sample indices, audited against ``clean`` (the entry's evaluation images)
    and the run's threat model; the first problem is one ``ExamplesError`` line."""
    if path.suffix.lower() not in SUFFIXES:
        raise ExamplesError(f"{path}: not a .npz, .safetensors or .pt file; export the images with numpy.savez "
                            "(arrays 'adversarial' and 'sample')")
    if not path.is_file():
        raise ExamplesError(f"{path}: no such file")
    data = _arrays(path)
    if "adversarial" not in data:
        raise ExamplesError(f"{path}: has no array 'adversarial' (it has {', '.join(sorted(data)) or 'none'}); "
                            "name the images 'adversarial' and their indices 'sample'")
    adversarial = data["adversarial"]
    samples = data.get("sample")
    if samples is None:
        raise ExamplesError(f"{path}: has no array 'sample'; give the index of each image's sample in the entry's "
                            "evaluation images")
    n, shape = len(clean), tuple(clean.shape[1:])
    if path.suffix.lower() in (".pt", ".pth") and adversarial.ndim == 4 and len(adversarial) > n:
        adversarial, samples = adversarial[:n], samples[:n]  # RobustBench's file covers the whole test set
    if adversarial.ndim != 4 or tuple(adversarial.shape[1:]) != shape:
        raise ExamplesError(f"{path}: 'adversarial' has shape {tuple(adversarial.shape)}; the entry's images are "
                            f"(N, {', '.join(map(str, shape))}), channels first")
    if not np.issubdtype(adversarial.dtype, np.floating):
        raise ExamplesError(f"{path}: 'adversarial' is {adversarial.dtype}; give float images in [0, 1] (float32)")
    if samples.ndim != 1 or len(samples) != len(adversarial) or not np.issubdtype(samples.dtype, np.integer):
        raise ExamplesError(f"{path}: 'sample' must be {len(adversarial)} integer indices, one per image; it is "
                            f"{samples.dtype} of shape {tuple(samples.shape)}")
    if len(samples) and (samples.min() < 0 or samples.max() >= n):
        raise ExamplesError(f"{path}: 'sample' holds {int(samples.min() if samples.min() < 0 else samples.max())}; "
                            f"the entry has samples 0 to {n - 1}")
    if len(np.unique(samples)) != len(samples):
        raise ExamplesError(f"{path}: 'sample' names a sample twice; give one image per sample")
    given = data.get("data_fingerprint")
    if given is not None and str(given) != run.data_fingerprint:
        raise ExamplesError(f"{path}: made on other images (data fingerprint {str(given)[:10]}, the entry's "
                            f"{(run.data_fingerprint or '')[:10]}); make the examples on the entry's images")
    images = torch.from_numpy(np.ascontiguousarray(adversarial, dtype=np.float32))
    for i, (image, sample) in enumerate(zip(images, samples.tolist())):
        where = f"{path}: image {i} (sample {sample})"
        if not torch.isfinite(image).all():
            raise ExamplesError(f"{where} has non-finite values (NaN or inf); every value must be in [0, 1]")
        if image.min() < 0 or image.max() > 1:
            raise ExamplesError(f"{where} has values outside [0, 1] (min {float(image.min()):.4g}, max "
                                f"{float(image.max()):.4g}); clip the images to [0, 1]")
        distance = float(run.threat.measure((image - clean[sample].cpu())[None])[0])
        if distance > run.threat.eps + TOLERANCE:
            raise ExamplesError(f"{where} is {distance:.6g} from the clean image of its sample in {run.threat.norm}, "
                                f"over ε = {run.threat.eps:.6g}: each image must be within ε of the clean image "
                                "its 'sample' index names (is the sample order the entry's?)")
    return images.numpy(), samples.astype(np.int64)


def submit(results: Path, path: Path, entry_name: str, name: str, device: torch.device | None = None,
           cache: Path | None = None, plugins: tuple[str, ...] = ()) -> tuple[Matchup, str]:
    """Audit the file, classify its images with the entry's model and record them as the attack ``external:NAME``
    in a run of their own (the entry's weights, images and threat model); returns the matchup and its run id."""
    if not _NAME.fullmatch(name):
        raise ArenaError(f"--name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-'")
    path = Path(path)
    Store.open_existing(results).close()  # refuses a folder without a store, rather than making one
    with Store(results) as store:
        entry = find_entry(standing([store]), entry_name)
        run, original = next((r, m) for r, m in reversed(behind(store, entry)) if not m.gradient.get("external"))
        rebuilt = Rebuilt.of(run, [original], device, cache, plugins)
        weights = rebuilt.check_weights(original)
        model, defense, _ = rebuilt.refs(original)
        images, labels = rebuilt.data.on(rebuilt.arena.device)
        adversarial, samples = read(path, images, run)
        digest = sha256(path)
        attack = f"external:{name}"
        key = content_key({"external": digest, "weights": weights, "defense": original.params.get("defense"),
                           "data": run.data_fingerprint, "threat": [run.threat.norm, run.threat.eps]})
        if store.find(key) is not None:
            raise ArenaError(f"{path}: already recorded for {entry.name} (same SHA-256 {digest[:12]}); nothing added")
        started = time.perf_counter()
        target, clean = rebuilt.clean(model, defense)
        chosen = torch.from_numpy(samples).to(rebuilt.arena.device)
        adv = torch.from_numpy(adversarial).to(rebuilt.arena.device)
        batch = rebuilt.scenario.batch_size
        after = predict(target, adv, batch, rebuilt.arena.device)
        right = (after == labels[chosen].cpu()).numpy()
        broken = clean[samples] & ~right
        robust = clean.copy()
        robust[samples[broken]] = False
        attacked = np.zeros_like(clean)
        attacked[samples] = clean[samples]
        norms = run.threat.measure(adv - images[chosen]).cpu()
        examples = _examples(target, images[chosen][broken], adv[broken], labels[chosen][broken], samples[broken])
        matchup = Matchup(
            model=original.model, defense=original.defense, attack=attack,
            params={"model": original.params.get("model"), "defense": original.params.get("defense"),
                    "attack": {"plugin": "external", "name": name, "file": path.name, "sha256": digest}},
            gradient={"external": digest}, key=key, status=Status.OK, samples=len(clean),
            wall_time_s=time.perf_counter() - started, clean_accuracy=float(clean.mean()),
            robust_accuracy=float(robust.mean()),
            attack_success_rate=float(broken.sum() / attacked.sum()) if attacked.any() else None,
            mean_norm=float(norms.double().mean()) if len(norms) else None,
            max_norm=float(norms.max()) if len(norms) else None,
            clean_correct=clean, robust_correct=robust, attacked=attacked, examples=examples)
        run_id = store.start_run(rebuilt.scenario, run.threat, len(clean), rebuilt.arena.device.type, run.classes,
                                 run.data_fingerprint, run.runtime, expected=[(original.model, original.defense,
                                                                               attack)])
        store.add_matchup(run_id, matchup)
        store.finish_run(run_id, "complete", {f"{original.model}/{original.defense}": {"key": weights,
                                                                                        "source": "external"}})
        return matchup, run_id


@torch.no_grad()
def _examples(target: torch.nn.Module, clean: torch.Tensor, adversarial: torch.Tensor, labels: torch.Tensor,
              samples: np.ndarray) -> list[Example]:
    """The submitted images that broke their sample, kept so anyone can classify them again (``arena verify``)."""
    if not len(samples):
        return []
    before, after = (torch.cat([target(x).softmax(1).cpu() for x in images.split(256)]) for images in
                     (clean, adversarial))
    return [Example(sample=int(s), label=int(y), clean=c.cpu().numpy(), adversarial=a.cpu().numpy(),
                    predicted_before=int(b.argmax()), predicted_after=int(p.argmax()),
                    confidence_before=float(b.max()), confidence_after=float(p.max()))
            for s, y, c, a, b, p in zip(samples, labels.tolist(), clean, adversarial, before, after)]
