"""Check every adversarial batch against the threat model; a violation is reported, never clipped into a pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arena.threat import ThreatModel

#: Slack on ε for float rounding; anything larger is a violation.
TOLERANCE = 1e-6


class PluginOutputError(Exception):
    """A plugin returned something of the wrong shape or dtype; the message names the plugin."""


@dataclass(frozen=True)
class AuditReport:
    """Per-sample perturbation sizes of one batch and, if the batch breaks the threat model, why."""

    norms: torch.Tensor
    violation: str | None


def audit(plugin: str, images: torch.Tensor, adversarial: torch.Tensor, threat: ThreatModel) -> AuditReport:
    """Check that ``adversarial`` is finite, inside [0, 1] and within ε of ``images`` in the threat model's norm."""
    if (
        not isinstance(adversarial, torch.Tensor)
        or adversarial.shape != images.shape
        or adversarial.dtype != images.dtype
    ):
        is_tensor = isinstance(adversarial, torch.Tensor)
        got = f"{tuple(adversarial.shape)} {adversarial.dtype}" if is_tensor else type(adversarial).__name__
        raise PluginOutputError(
            f"attack {plugin!r} returned {got} for a batch of {tuple(images.shape)} {images.dtype}; "
            f"an attack must return a tensor of its input's shape and dtype"
        )
    adversarial = adversarial.detach()
    finite = torch.isfinite(adversarial)
    norms = threat.measure(torch.where(finite, adversarial, images) - images)
    problems = []
    if not finite.all():
        problems.append(f"{int((~finite).sum())} non-finite values")
    if finite.any():
        low, high = float(adversarial[finite].min()), float(adversarial[finite].max())
        if low < 0 or high > 1:
            problems.append(f"values outside [0, 1] (min {low:.6g}, max {high:.6g})")
    over = norms > threat.eps + TOLERANCE
    if over.any():
        problems.append(
            f"{threat.norm} norm up to {float(norms.max()):.6g} > ε = {threat.eps:.6g} "
            f"on {int(over.sum())} of {len(norms)} samples"
        )
    return AuditReport(norms=norms, violation="; ".join(problems) or None)
