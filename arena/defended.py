"""The defended model every attack sees: preprocessors, the trained network and postprocessors as one ``nn.Module``.

Gradients go through differentiable stages directly. A non-differentiable stage is crossed with BPDA (its
``estimate_gradient``; identity for postprocessors, whose output is log-probabilities), or, when an attack turns
BPDA off, with a zero gradient, which is what a naive attack gets. When a stage is randomized and gradients are on,
the output is the log of the class probabilities averaged over several draws (EOT), so every gradient-based attack
attacks the expected model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from arena.kinds import Postprocessor, Preprocessor
from arena.records import GradientPath


class _Bridge(torch.autograd.Function):
    """Runs a stage that torch cannot differentiate; its backward is the stage's gradient estimate, or zero."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, stage: Callable, estimate: Callable | None) -> torch.Tensor:
        ctx.estimate = estimate
        ctx.save_for_backward(x)
        with torch.no_grad():
            return stage(x.detach()).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (x,) = ctx.saved_tensors
        return (torch.zeros_like(grad) if ctx.estimate is None else ctx.estimate(x, grad)), None, None


class Defended(nn.Module):
    """[0, 1] images → logits through every inference-time stage of a defense entry.

    ``bpda``: cross non-differentiable stages with their gradient estimate (else zero gradient);
    ``eot_samples``: draws averaged per forward pass when a stage is randomized and gradients are on.
    """

    def __init__(
        self, net: nn.Module, pre: Sequence[Preprocessor] = (), post: Sequence[Postprocessor] = (),
        bpda: bool = True, eot_samples: int = 1,
    ) -> None:
        super().__init__()
        self.net, self.pre, self.post = net, list(pre), list(post)
        self.bpda, self.eot_samples = bpda, eot_samples
        self.randomized = any(stage.randomized for stage in self.pre)

    def draws(self) -> int:
        """Network passes one forward call makes: ``eot_samples`` for a randomized defense under gradients, else 1."""
        return self.eot_samples if self.randomized and torch.is_grad_enabled() else 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        draws = self.draws()
        if draws == 1:
            return self._once(images)
        log_probs = torch.stack([self._once(images).log_softmax(1) for _ in range(draws)])
        return log_probs.logsumexp(0) - math.log(draws)

    def _once(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.pre:
            if stage.differentiable:
                x = stage(x)
            else:
                x = _Bridge.apply(x, stage, stage.estimate_gradient if self.bpda else None)
        logits = self.net(x)
        if not self.post:
            return logits
        log_probs = logits.log_softmax(1)
        with torch.no_grad():
            probabilities = log_probs.exp()
            for post in self.post:
                probabilities = post(probabilities).to(log_probs.dtype)
            output = probabilities.clamp_min(1e-12).log()
        # Straight through: the value is the postprocessed output, the gradient that of log_probs (BPDA) or zero.
        return log_probs + (output - log_probs).detach() if self.bpda else output + 0 * log_probs

    def gradient(self) -> GradientPath:
        """How attacks differentiate this module, recorded with each matchup."""
        crossed = [s.name for s in self.pre if not s.differentiable] + [s.name for s in self.post]
        return GradientPath(
            bpda=crossed if self.bpda else [],
            masked=[] if self.bpda else crossed,
            randomized=[s.name for s in self.pre if s.randomized],
            eot_samples=self.eot_samples if self.randomized else 1,
        )


def describe_gradient(gradient: GradientPath) -> str:
    """One phrase such as ``white-box, BPDA through art.jpeg`` (or ``gradient-free`` for noise, Square) for tables
    and logs."""
    parts = [f"transfer from {gradient['source']}" if gradient.get("source") else
             "gradient-free" if gradient.get("gradient_free") else "white-box"]
    if gradient.get("bpda"):
        parts.append("BPDA through " + ", ".join(gradient["bpda"]))
    if gradient.get("masked"):
        parts.append("no gradient through " + ", ".join(gradient["masked"]))
    if gradient.get("randomized"):
        samples = gradient.get("eot_samples", 1)
        parts.append(f"EOT over {samples} draws" if samples > 1 else "randomized, no EOT")
    return ", ".join(parts)
