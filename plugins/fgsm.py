"""The arena's own FGSM: one gradient step of size ε, the sign (L∞) or the normalised gradient (L2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from arena import Attack, hookimpl


class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al., 2015); the L2 form steps along the unit-norm gradient."""

    name = "fgsm"

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = images.clone().detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(self.model(x), labels), x)
        if self.threat.norm == "linf":
            direction = grad.sign()
        else:
            direction = grad / self.threat.measure(grad).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
        return (images + self.threat.eps * direction).clamp(0, 1).detach()


@hookimpl
def arena_register_attacks(register) -> None:
    register(FGSM)
