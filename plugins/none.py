"""The ``none`` defense: the scenario's standard training, nothing at inference; every defense is compared with it."""

from __future__ import annotations

from arena import Defense, hookimpl


class NoDefense(Defense):
    """No defense: the model as trained by the scenario's recipe."""

    name = "none"


@hookimpl
def arena_register_defenses(register) -> None:
    register(NoDefense)
