"""The threat model: which norm measures a perturbation and how large it may be."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Norm = Literal["linf", "l2"]


def eps_text(eps: float) -> str:
    """ε as the field writes it: ``8/255`` when it is a whole number of 255ths, else its decimal value (``0.1``)."""
    steps = eps * 255
    return f"{round(steps)}/255" if steps >= 0.5 and abs(steps - round(steps)) < 1e-3 else f"{eps:.4g}"


@dataclass(frozen=True)
class ThreatModel:
    """An ε-ball in the L∞ or L2 norm around each input image; inputs live in [0, 1]."""

    norm: Norm
    eps: float

    def measure(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample size of ``delta`` (shape ``[B, ...]``) in this threat model's norm."""
        flat = delta.detach().flatten(1)
        if self.norm == "linf":
            return flat.abs().amax(dim=1)
        return flat.norm(p=2, dim=1)

    def __str__(self) -> str:
        return f"{self.norm} ε={eps_text(self.eps)}"
