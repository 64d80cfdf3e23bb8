"""Checks that are properties of the defended model, not of the attack (whether it returns probabilities, whether
its forward passes agree, zero and saturated input gradients, unstable predictions), measured once per model ×
defense and shared by every attack on it, so that a matchup's fixed cost stays small beside its attack.

Each result is kept under what it measured: the model and defense (a transfer attack's source model too), the
samples, and for a gradient check how gradients are taken (BPDA, EOT). Every measurement runs with the random state
forked, so an attack's random draws are the same whether a check was measured before it or reused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import torch

from arena.records import GradientPath

T = TypeVar("T")


class Once(Protocol):
    """Measures ``compute`` (named ``name``; ``gradient``: it depends on how gradients are taken) or returns the
    result already measured on the same subject."""

    def __call__(self, name: str, compute: Callable[[], T], gradient: bool = False) -> T: ...


def fresh(name: str, compute: Callable[[], T], gradient: bool = False) -> T:
    """No sharing: measure every time (a check called on its own, outside a run)."""
    return compute()


class ModelChecks:
    """One run's model-level check results, each measured the first time an attack on its subject asks for it."""

    def __init__(self) -> None:
        self._found: dict[tuple[Any, ...], Any] = {}

    def scope(self, model: str, defense: str, gradient: GradientPath, samples: torch.Tensor) -> Once:
        """The ``Once`` of one matchup: attacks on ``model`` + ``defense`` with gradients taken as ``gradient`` says
        (its ``source``: the model a transfer attack differentiates), probed on ``samples`` (indices)."""
        subject = (model, defense, str(gradient.get("source")), tuple(samples.tolist()))
        how = json.dumps(gradient, sort_keys=True, default=str)

        def once(name: str, compute: Callable[[], T], gradient: bool = False) -> T:
            key = (*subject, name, how if gradient else None)
            if key not in self._found:
                with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
                    self._found[key] = compute()
            return self._found[key]

        return once
