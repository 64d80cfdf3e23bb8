"""PGD through torchattacks: ``PGD`` for the L∞ threat model, ``PGDL2`` for L2."""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from arena import Attack, Param, ThreatModel, hookimpl

# torchattacks is imported when the attack is built, not here: importing it takes about a second (startup time).
# It is installed in a step of its own (README: its requests pin); without it this plugin does not load, and says why.
if importlib.util.find_spec("torchattacks") is None:
    raise ImportError('torchattacks is not installed; pip install --no-deps "torchattacks>=3.5" (the README says '
                      "why --no-deps)")


class PGD(Attack):
    """Projected gradient descent (Madry et al., 2018), torchattacks' PGD / PGDL2."""

    name = "pgd"
    params = {
        "steps": Param(int, 10, "gradient steps", ge=1),
        "step_size": Param(float, None, "absolute step size; default 2.5·ε/steps", gt=0, nullable=True),
        "random_start": Param(bool, True, "start from a uniformly random point of the ε-ball"),
    }

    def __init__(self, model: nn.Module, threat: ThreatModel, **values) -> None:
        import torchattacks

        super().__init__(model, threat, **values)
        alpha = self.step_size or 2.5 * threat.eps / self.steps
        cls = torchattacks.PGD if threat.norm == "linf" else torchattacks.PGDL2
        self.attack = cls(model, eps=threat.eps, alpha=alpha, steps=self.steps, random_start=self.random_start)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.attack(images, labels)


@hookimpl
def arena_register_attacks(register) -> None:
    register(PGD)
