"""Plugins that misbehave on purpose, loaded by tests with ``-p arena_test_plugins`` or ``load_registry(modules=)``."""

from __future__ import annotations

import torch

from arena import Attack, Param, hookimpl


class Cheat(Attack):
    """Steps `factor`·ε along the gradient sign: outside the threat model, so the audit must catch it."""

    name = "cheat"
    params = {"factor": Param(float, 2.0, "multiple of ε to step", gt=0)}

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = images.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(self.model(x), labels), x)
        return (images + self.factor * self.threat.eps * grad.sign()).clamp(0, 1).detach()


class ModeProbe(Attack):
    """Records whether the model was in training mode when the attack ran; returns the images unchanged."""

    name = "mode_probe"
    seen_training: list[bool] = []

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ModeProbe.seen_training.append(self.model.training)
        return images.clone()


class Explode(Attack):
    """Raises inside the matchup, as a buggy plugin would."""

    name = "explode"

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom from a plugin")


class WrongShape(Attack):
    """Returns one image too few."""

    name = "wrong_shape"

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return images[1:].clone()


@hookimpl
def arena_register_attacks(register) -> None:
    for cls in (Cheat, ModeProbe, Explode, WrongShape):
        register(cls)
