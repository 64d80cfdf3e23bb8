"""How networks run beyond their device: opt-in speed settings for GPUs (``--precision``, ``--compile``,
``--channels-last``). Each may change results in the last bits, so each enters the matchup key when it is on.

bf16 applies to the attack's own passes only (autocast around the module an attack differentiates): every
adversarial example is still audited, and judged by the float32 model, so a number never rests on bf16 predictions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

import torch
from torch import nn


class ChannelsLast(nn.Module):
    """``module`` with its weights and inputs in channels-last memory format (faster convolutions on GPUs)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images.contiguous(memory_format=torch.channels_last))


@dataclass(frozen=True)
class Runtime:
    """The opt-in settings; the defaults (float32, eager, contiguous) are the reference."""

    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    channels_last: bool = False

    def key(self) -> dict[str, Any]:
        """The settings that differ from the reference, for matchup keys (empty by default, so older keys hold)."""
        return {k: v for k, v in asdict(self).items() if v != getattr(Runtime, k)}

    @property
    def autocast(self) -> torch.dtype | None:
        """The dtype attacks differentiate in under autocast; None for float32."""
        return torch.bfloat16 if self.precision == "bf16" else None

    def prepare(self, network: nn.Module) -> nn.Module:
        """``network`` (trained, in eval mode) as attacks and judges will run it."""
        if self.channels_last:
            network = ChannelsLast(network).eval()
        if self.compile:
            return cast(nn.Module, torch.compile(network))
        return network
