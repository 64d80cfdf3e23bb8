"""The random-noise baseline of the second seed study: how much of an attack's success a random perturbation of the
same budget already gets. A gradient-free attack, so it also serves as a black-box check on gradient masking."""

from __future__ import annotations

import torch

from arena import Attack, Param, hookimpl


class RandomNoise(Attack):
    """Random noise inside the ε-ball: uniform in the L∞ box, or a uniformly random direction of L2 norm ε per
    image; the best of ``tries`` draws (an image counts as broken if any draw breaks it)."""

    name = "noise"
    gradient_free = True
    params = {"tries": Param(int, 1, "noise draws per image; the first draw that breaks an image is kept", ge=1)}

    def draw(self, images: torch.Tensor) -> torch.Tensor:
        """One perturbation per image, inside the threat model's ball (before clipping to [0, 1], which only
        shrinks it). L2: a Gaussian direction normalised per image — not by the whole batch's norm, as the seed
        study did, which bounds no single image."""
        eps = self.threat.eps
        if self.threat.norm == "linf":
            return torch.empty_like(images).uniform_(-eps, eps)
        direction = torch.randn_like(images)
        return direction * (eps / direction.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, *[1] * (images.dim() - 1))

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        best = images.clone()
        broken = torch.zeros(len(images), dtype=torch.bool, device=images.device)
        for _ in range(self.tries):
            candidate = (images + self.draw(images)).clamp(0, 1)
            with torch.no_grad():
                fooled = (self.model(candidate).argmax(1) != labels) & ~broken
            best[fooled] = candidate[fooled]
            broken |= fooled
            if broken.all():
                break
        return best


@hookimpl
def arena_register_attacks(register) -> None:
    register(RandomNoise)
