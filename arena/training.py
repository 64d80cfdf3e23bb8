"""Train models with the scenario's recipe, seeded, and cache the weights under a key of all that determines them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import platformdirs
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm.auto import tqdm

from arena.errors import ArenaError
from arena.version import __version__

log = logging.getLogger(__name__)

#: Where trained weights are kept; defaults to the user cache folder.
CACHE_ENV = "ARENA_CACHE_DIR"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch and ask torch for deterministic kernels, so a re-run gives the same numbers."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def fingerprint(*tensors: torch.Tensor) -> str:
    """A content hash of tensors, so cached weights are tied to the exact training data."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class TrainConfig(BaseModel):
    """How a model is trained (a scenario's ``train:``); the defaults are the seed study's recipe."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    augment: Literal["flip", "crop_flip", "none"] = "flip"
    #: ``constant``; ``cosine`` decay to 0; ``onecycle``: linear warm-up to ``lr`` over 30 % of the steps, then cosine
    #: decay (torch's ``OneCycleLR``), the short-schedule recipe for ResNets.
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"

    #: Fields added after weights were first cached: left at their default, they stay out of the weights key, so
    #: weights trained before they existed keep their key.
    _LATER: ClassVar[dict[str, Any]] = {"schedule": "constant"}

    def identity(self) -> dict[str, Any]:
        """The fields that determine the weights, for the cache key."""
        return {k: v for k, v in self.model_dump().items() if k not in self._LATER or self._LATER[k] != v}


@dataclass
class Trainer:
    """The scenario's training recipe (default: the seed's Adam 1e-3, batch 64, 10 epochs, random flips)."""

    config: TrainConfig
    seed: int
    device: torch.device
    num_classes: int
    label: str = ""
    progress: bool = True
    #: The undefended model trained with the same recipe (trained or loaded from the cache on first call), for
    #: defenses that craft their training data on a fixed baseline, as the seed study did.
    baseline: Callable[[], nn.Module] | None = None

    def optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The recipe's optimizer over ``model``'s parameters."""
        cfg = self.config
        if cfg.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def schedule(self, optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The recipe's learning-rate schedule over ``steps`` optimizer steps, stepped once per batch; None for
        ``constant``."""
        if self.config.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
        if self.config.schedule == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.config.lr, total_steps=max(steps, 1),
                                                       pct_start=0.3, cycle_momentum=False)
        return None

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The recipe's augmentation of one batch: random horizontal flips, after random 4-pixel-padded crops for
        ``crop_flip`` (the standard CIFAR recipe); seeded by ``generator``."""
        if self.config.augment == "none":
            return x
        if self.config.augment == "crop_flip":
            pad, (n, c, h, w) = 4, x.shape
            dy, dx = (torch.randint(0, 2 * pad + 1, (n, 1), generator=generator) for _ in range(2))
            rows, cols = dy + torch.arange(h), dx + torch.arange(w)
            x = F.pad(x, (pad,) * 4)[torch.arange(n).view(n, 1, 1, 1), torch.arange(c).view(1, c, 1, 1),
                                     rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
        flip = torch.rand(len(x), generator=generator) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)

    def fit(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Train ``model`` in place on ``images`` in [0, 1]; shuffling and augmentation come from a seeded
        generator."""
        cfg = self.config
        model.to(self.device).train()
        optimizer = self.optimizer(model)
        scheduler = self.schedule(optimizer, cfg.epochs * -(-len(images) // cfg.batch_size))
        generator = torch.Generator().manual_seed(self.seed)
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(images), generator=generator)
            batches = tqdm(
                order.split(cfg.batch_size), desc=f"train {self.label} {epoch + 1}/{cfg.epochs}",
                disable=not self.progress, leave=False, unit="batch",
            )
            for index in batches:
                x, y = self.augment(images[index], generator), labels[index]
                loss = F.cross_entropy(model(x.to(self.device)), y.to(self.device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                batches.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
            log.info("trained %s epoch %d/%d, last batch loss %.3f", self.label, epoch + 1, cfg.epochs, loss.item())
        model.eval()


def content_key(fields: dict[str, Any]) -> str:
    """A stable hash of everything that determines a result (arena version included): the cache and reuse key."""
    text = json.dumps({"arena": __version__, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class WeightsCache:
    """Trained ``state_dict``s on disk, one file per key; loaded with ``weights_only=True``."""

    def __init__(self, root: Path | None = None) -> None:
        default = Path(platformdirs.user_cache_dir("arena")) / "weights"
        self.root = Path(root or os.environ.get(CACHE_ENV) or default)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.pt"

    def check(self) -> None:
        """Refuse, before any work, a cache folder that is a file or cannot be written."""
        if self.root.exists() and not self.root.is_dir():
            raise ArenaError(f"weights cache {self.root} is a file, not a folder; pass --cache-dir FOLDER (or set "
                             f"{CACHE_ENV}) to a folder")
        existing = next(p for p in (self.root, *self.root.parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ArenaError(f"weights cache {self.root} cannot be written ({existing} is not writable); pass "
                             f"--cache-dir FOLDER (or set {CACHE_ENV}) to a folder you can write")

    def load(self, key: str, model: nn.Module) -> bool:
        """Load the weights stored under ``key`` into ``model``; False when there are none. Only a regular file is
        read (never through a link), with ``weights_only=True``; one that cannot be loaded is moved aside, with one
        warning naming it, and the weights are trained again."""
        path = self.path(key)
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            return False
        try:
            if not stat.S_ISREG(mode):
                raise ValueError("not a regular file")
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # corrupt, refused by weights_only, or of another architecture
            aside = path.with_name(f"{path.name}.unusable-{os.getpid()}")
            os.replace(path, aside)
            reason = str(exc).strip().splitlines()[0][:200]
            log.warning("cached weights %s could not be loaded (%s: %s); moved aside to %s, training again",
                        path, type(exc).__name__, reason, aside)
            return False
        return True

    def save(self, key: str, model: nn.Module, fields: dict[str, Any]) -> Path:
        """Write atomically: a unique temporary file in the same folder (never through a link), then renamed over
        the key's file, so concurrent writers of one key never clash and readers never see half a file. The key's
        fields are written beside it, the same way, for people to read."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        _atomic_write(path, lambda out: torch.save(model.state_dict(), out))
        text = json.dumps({"arena": __version__, **fields}, indent=2, default=str).encode()
        _atomic_write(path.with_suffix(".json"), lambda out: out.write(text))
        return path


def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    """``write`` into a fresh ``mkstemp`` file beside ``path`` (created exclusively: a planted link is never
    followed), then ``os.replace`` it onto ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
