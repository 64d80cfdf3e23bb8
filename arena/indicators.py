"""Indicators of attack failure (Pintor et al., NeurIPS 2022), measured with every matchup on its first batch.

``silent_success``: an iterate of the attack was adversarial but the point it returned is not (read from the margin
trace ``arena.cost.Counted`` records). ``unconstrained``: the same attack, given an ε that covers the whole [0, 1]
box, must break essentially every sample of a small probe; when it does not, it fails whatever the ε.
``unstable``: the loss varies strongly under uniform perturbations of radius ε/2, so one gradient is a poor guide
(EOT needed). ``saturated``: of the samples whose input gradient is zero, how many still have a nonzero margin
gradient: the loss saturated (logits scaled up, a distilled model deployed at temperature 1) rather than a stage
without gradient. Written from the paper, not from its (GPL) code.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arena.cost import Counted, margins
from arena.kinds import Attack
from arena.model_checks import Once, fresh
from arena.records import GradientPath
from arena.threat import ThreatModel

#: Probe samples the unconstrained attack runs on (its cost: the attack's passes on these, stored with the check).
UNCONSTRAINED_SAMPLES = 10
#: Share of the probe an unconstrained attack must break; below it the attack is failing.
UNCONSTRAINED_SHARE = 0.95
#: Uniform draws in the ε/2 box per sample, and the samples drawn around, for the unstable-predictions indicator.
UNSTABLE_DRAWS = 10
UNSTABLE_SAMPLES = 50
#: Share of noisy predictions differing from the clean one above which predictions count as unstable.
UNSTABLE_SHARE = 0.2


def silent_success(trace: torch.Tensor, robust: torch.Tensor) -> int:
    """Samples whose margin was positive (misclassified) at some traced call of the attack while the returned point
    is still classified right (``robust``); NaN entries (samples an early-exit attack dropped) never count."""
    if trace.dim() != 2 or not len(trace):
        return 0
    return int(((trace > 0).any(0) & robust.to(trace.device)).sum())


def whole_box(threat: ThreatModel, images: torch.Tensor) -> ThreatModel:
    """The threat model whose ball covers the whole [0, 1] box around any image of this shape."""
    return ThreatModel(threat.norm, 1.0 if threat.norm == "linf" else math.sqrt(images[0].numel()))


def unconstrained(
    attack: Attack, counted: Counted, target: nn.Module, images: torch.Tensor, labels: torch.Tensor,
    threat: ThreatModel,
) -> dict[str, Any]:
    """The attack rebuilt with the whole box as its ε (same parameters) on the first ``UNCONSTRAINED_SAMPLES``:
    ``checked``, ``broken`` (by the target's judgement) and ``passes`` (network passes it cost, not charged to the
    matchup)."""
    images, labels = images[:UNCONSTRAINED_SAMPLES], labels[:UNCONSTRAINED_SAMPLES]
    # a random start in the whole box is a random image: it would break most samples by itself
    changes = {"random_start": False} if "random_start" in attack.params else {}
    unbounded = attack.rebuilt(whole_box(threat, images), **changes)
    with counted.apart() as passes:
        adversarial = unbounded(images, labels)
    cost = passes.forward + passes.backward
    with torch.no_grad():
        broken = int((target(adversarial).argmax(1) != labels).sum())
    return {"checked": len(images), "broken": broken, "passes": cost}


def unconstrained_failed(checks: dict[str, Any]) -> bool:
    """Whether a matchup's unconstrained-attack probe broke too few samples (the attack fails whatever the ε)."""
    box = checks.get("unconstrained") or {}
    return "broken" in box and box["broken"] < UNCONSTRAINED_SHARE * box["checked"]


def unstable(attacked: nn.Module, images: torch.Tensor, eps: float) -> float:
    """Share of (sample, draw) pairs, over ``UNSTABLE_DRAWS`` uniform draws in the L∞ ε/2 box around the first
    ``UNSTABLE_SAMPLES``, whose prediction differs from the clean one (on logits, so scaling them changes nothing)."""
    images = images[:UNSTABLE_SAMPLES]
    with torch.no_grad():
        clean = attacked(images).argmax(1)
        changed = [
            (attacked((images + torch.empty_like(images).uniform_(-eps / 2, eps / 2)).clamp(0, 1)).argmax(1) != clean)
            for _ in range(UNSTABLE_DRAWS)
        ]
    return float(torch.stack(changed).float().mean())


def saturated(attacked: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> int:
    """Samples whose cross-entropy input gradient is all zero while their margin's is not: a saturated softmax
    (logits scaled up), which a margin loss (DLR) or logits rescaled by the attacker still climbs."""
    x = images.clone().requires_grad_(True)
    with torch.enable_grad():
        logits = attacked(x).float()
        (ce,) = torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), x, retain_graph=True)
        (margin,) = torch.autograd.grad(margins(logits, labels).sum(), x)
    zero = ce.flatten(1).abs().sum(1) == 0
    return int((zero & (margin.flatten(1).abs().sum(1) > 0)).sum())


def measure(
    attack: Attack, counted: Counted, target: nn.Module, images: torch.Tensor, labels: torch.Tensor,
    threat: ThreatModel, gradient: GradientPath, zero_gradient: int, iterative: bool, once: Once = fresh,
) -> dict[str, Any]:
    """The cheap indicators of one matchup's first batch, run after the attack so they change none of its random
    draws: ``unstable``, ``saturated`` (when some gradient was zero) and, for an ``iterative`` gradient attack on the
    target itself, ``unconstrained`` (or the reason it could not be rebuilt with the whole box as its ε). A
    single-step attack is not asked: one sign step across the whole box is a jump to a corner, not an optimisation
    that an unbounded budget lets converge (FGSM broke 8 of 10 on a sound CNN), and the check that an iterative
    attack is never weaker than a single-step one already judges it."""
    found: dict[str, Any] = {
        "unstable": once(f"unstable {threat.eps!r}", lambda: unstable(counted.module, images, threat.eps))}
    if zero_gradient:
        found["saturated"] = once("saturated", lambda: saturated(counted.module, images, labels), gradient=True)
    if iterative and not gradient.get("source") and not gradient.get("gradient_free"):
        try:
            found["unconstrained"] = unconstrained(attack, counted, target, images, labels, threat)
        except Exception as error:  # a plugin that refuses a huge ε: say so, keep the matchup
            found["unconstrained"] = {"error": f"{type(error).__name__}: {error}"}
    return found
