"""Example third-party plugins for the arena, packaged on their own and found through the ``arena`` entry point.

- ``mifgsm``: a thin adapter over a library attack (torchattacks' momentum iterative FGSM), the pattern the built-in
  attacks follow;
- ``checkpoint``: one of the arena's architectures with weights trained elsewhere, loaded from a file.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch
from torch import nn

from arena import Attack, Model, Param, hookimpl
from arena_plugins.models import CNN, CNNLSTM

ARCHITECTURES = {"cnn": CNN, "cnn_lstm": CNNLSTM}


class MIFGSM(Attack):
    """Momentum iterative FGSM (Dong et al., 2018), L∞ only, through torchattacks with the paper's defaults."""

    name = "mifgsm"
    params = {
        "steps": Param(int, 10, "iterations", ge=1),
        "decay": Param(float, 1.0, "momentum decay factor μ", ge=0),
    }

    def __init__(self, model: nn.Module, threat, **values) -> None:
        super().__init__(model, threat, **values)
        if threat.norm != "linf":
            raise ValueError(f"mifgsm is an L∞ attack; this threat model is {threat}; use pgd for L2")
        # Imported here, not at the top: importing torchattacks takes a second, which every arena command (listing
        # the plugins, validating a scenario) would pay otherwise.
        import torchattacks

        # The paper's step: ε / steps, so the last iterate can reach the boundary.
        self.attack = torchattacks.MIFGSM(model, eps=threat.eps, alpha=threat.eps / self.steps, steps=self.steps,
                                          decay=self.decay)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.attack(images, labels)


def _refused(path: Path) -> str | None:
    """Why ``path`` is no plain state_dict (checked when the scenario is validated), else None. ``weights_only``
    refuses a pickle that would run code or build objects, without running it."""
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return (f"{path} is refused: not a plain state_dict (loading it would run code or build objects); save one "
                "with torch.save(model.state_dict(), path), and load only checkpoints you trust")
    return None


class Checkpoint(Model):
    """An arena architecture with weights trained elsewhere, loaded from a ``state_dict`` file."""

    name = "checkpoint"
    pretrained = True
    params = {
        "path": Param(Path, help="state_dict file (torch.save); a relative path is read from the scenario's folder",
                      check=_refused),
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
    register(MIFGSM)


@hookimpl
def arena_register_models(register) -> None:
    register(Checkpoint)
