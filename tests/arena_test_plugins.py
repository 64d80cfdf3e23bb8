"""Plugins that misbehave on purpose, loaded by tests with ``-p arena_test_plugins`` or ``load_registry(modules=)``."""

from __future__ import annotations

import torch

from arena import Attack, Model, Param, Preprocessor, Suite, hookimpl
from arena_plugins.models import CNNNet


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


class Forgetful(Attack):
    """Steps of sign-gradient ascent, then returns the clean images: the extreme of an attack that does not keep its
    best iterate (silent success)."""

    name = "forgetful"
    params = {"steps": Param(int, 5, "gradient steps", ge=1)}

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = images.clone()
        for _ in range(self.steps):
            x.requires_grad_(True)
            (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(self.model(x), labels), x)
            x = (images + (x.detach() + self.threat.eps / 2 * grad.sign() - images).clamp(-self.threat.eps,
                                                                                          self.threat.eps)).clamp(0, 1)
        return images.clone()


class TenClasses(Attack):
    """One FGSM step that assumes ten classes, as an attack written for CIFAR-10 may: it fails on the binarization
    test's 2-class head."""

    name = "ten_classes"

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = images.clone().requires_grad_(True)
        logits = self.model(x)
        if logits.shape[1] < 10:
            raise ValueError(f"needs 10 classes, got {logits.shape[1]}")
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, labels), x)
        return (images + self.threat.eps * grad.sign()).clamp(0, 1).detach()


class HiddenMask(Preprocessor):
    """Rounds pixels to 8 levels but declares itself differentiable: every gradient through it is zero, which only
    the arena's own zero-gradient check can tell (masking the plugin did not declare)."""

    name = "hidden_mask"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.round(images * 8) / 8


class HiddenNoise(Preprocessor):
    """Adds Gaussian noise but does not declare ``randomized = True``: EOT never averages it (undeclared
    randomness), which only the arena's behavioural checks can tell."""

    name = "hidden_noise"
    params = {"sigma": Param(float, 0.1, "noise standard deviation", gt=0)}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images + self.sigma * torch.randn_like(images)).clamp(0, 1)


class _Hot(CNNNet):
    """The CNN whose logits are multiplied by 1000 outside training (distillation deployed at temperature 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return logits if self.training else 1000 * logits


class HotCNN(Model):
    """The seed study's CNN, its logits scaled ×1000 at inference: the softmax saturates, gradients vanish."""

    name = "hot_cnn"

    def build(self, num_classes: int) -> torch.nn.Module:
        return _Hot(num_classes, normalize=True)


class WhenSuite(Suite):
    """A short PGD, then Square only where the checks doubt the gradients: the conditional cascade in small."""

    name = "when_test"

    def attacks(self) -> list[dict]:
        return [{"name": "pgd", "steps": 3}, {"name": "square", "n_queries": 20, "when": ["gradients"]}]


@hookimpl
def arena_register_defenses(register) -> None:
    register(HiddenMask)
    register(HiddenNoise)


@hookimpl
def arena_register_models(register) -> None:
    register(HotCNN)


@hookimpl
def arena_register_suites(register) -> None:
    register(WhenSuite)


@hookimpl
def arena_register_attacks(register) -> None:
    for cls in (Cheat, ModeProbe, Explode, WrongShape, Forgetful, TenClasses):
        register(cls)
