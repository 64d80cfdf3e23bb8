"""The ``fast`` suite: AutoAttack's strength at a fraction of its passes, the arena's recommended strong attack.

APGD-CE with per-sample early exit (``early_apgd_ce``: the original's robust set at fewer passes), then targeted
APGD on the ``targets`` wrong classes MALT ranks most promising instead of nine, then FAB-T on its first target class
only (AutoAttack's first of nine FAB-T runs: a minimum-norm attack catches the rare sample the loss-based ones miss,
at ~300 passes per sample still robust), then a short Square probe on the samples still robust. The full Square
runs only where the probe broke something the gradient attacks missed or the arena's own checks doubt the gradients
(zero gradients, randomness, a stage crossed by BPDA, an unconstrained-attack failure); elsewhere it is recorded as
skipped (``arena.conditions``).
"""

from __future__ import annotations

from typing import Any

from arena import Param, Suite, hookimpl


class FastSuite(Suite):
    """APGD-CE, APGD-T on a few target classes, FAB-T on one, a short Square probe; Square only where checks fire."""

    name = "fast"
    params = {
        "targets": Param(int, 3, "target classes of APGD-T, most promising first (AutoAttack tries 9)", ge=1, le=9),
        "probe_queries": Param(int, 100, "queries of the Square probe on the samples the gradient attacks left", ge=1),
    }

    def attacks(self) -> list[dict[str, Any]]:
        return [
            {"name": "early_apgd_ce"},
            {"name": "early_apgd_t", "n_target_classes": self.targets, "ranking": "malt"},
            {"name": "fab_t", "n_target_classes": 1},
            {"name": "square", "n_queries": self.probe_queries, "label": "square_probe"},
            {"name": "square", "when": ["gradients", "black_box"]},
        ]


@hookimpl
def arena_register_suites(register) -> None:
    register(FastSuite)
