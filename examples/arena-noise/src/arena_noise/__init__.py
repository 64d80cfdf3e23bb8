"""Example third-party plugins for the arena, packaged on their own and found through the ``arena`` entry point.

- ``noise``: the seed study's random-noise baseline, a perturbation of the full budget in a random direction;
- ``checkpoint``: one of the arena's architectures with weights trained elsewhere, loaded from a file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from arena import Attack, Model, Param, hookimpl
from arena_plugins.models import CNN, CNNLSTM

ARCHITECTURES = {"cnn": CNN, "cnn_lstm": CNNLSTM}


class RandomNoise(Attack):
    """Random noise of the full budget: uniform ±ε per pixel (L∞) or a random direction of norm ε (L2)."""

    name = "noise"
    gradient_free = True
    params = {"tries": Param(int, 1, "noise draws per image; an image counts as broken if any draw breaks it", ge=1)}

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        best = images
        for _ in range(self.tries):
            if self.threat.norm == "linf":
                noise = torch.empty_like(images).uniform_(-1, 1).sign() * self.threat.eps
            else:
                noise = torch.randn_like(images)
                noise = noise * self.threat.eps / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            candidate = (images + noise).clamp(0, 1)
            with torch.no_grad():
                fooled = self.model(candidate).argmax(1) != labels
            best = torch.where(fooled.view(-1, 1, 1, 1), candidate, best)
        return best


class Checkpoint(Model):
    """An arena architecture with weights trained elsewhere, loaded from a ``state_dict`` file."""

    name = "checkpoint"
    pretrained = True
    params = {
        "path": Param(Path, help="state_dict file (torch.save); a relative path is read from the scenario's folder"),
        "arch": Param(str, "cnn", choices=tuple(ARCHITECTURES)),
    }

    def build(self, num_classes: int) -> nn.Module:
        net = ARCHITECTURES[self.arch]().build(num_classes)
        net.load_state_dict(torch.load(self.path, map_location="cpu", weights_only=True))
        return net

    def identity(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@hookimpl
def arena_register_attacks(register) -> None:
    register(RandomNoise)


@hookimpl
def arena_register_models(register) -> None:
    register(Checkpoint)
