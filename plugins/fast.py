"""The ``fast`` suite: AutoAttack's strength at a fraction of its passes, the arena's recommended strong attack.

On a robust model most of AutoAttack's passes go to the samples that never break (about 100 + 1,800 + 2,700 + 5,000
per survivor for APGD-CE, APGD-T, FAB-T and Square), so the suite spends less where that cost is:

- APGD-CE with per-sample early exit (``early_apgd_ce``: the original's robust set at fewer passes) and online
  discarding (A³, Liu et al. 2022): a sample that after ``discard_after`` iterations is still farther than
  ``discard_margin`` from the boundary (DLR-scaled) and has stopped approaching it is dropped. Samples that break late
  were either close by then or still closing in.
- Targeted APGD, likewise, on the ``targets`` wrong classes MALT ranks most promising, not nine.
- A short Square probe on the samples still robust.
- FAB-T (on its first target class) and the full Square run only where the arena's own checks doubt the gradients
  (zero gradients, randomness, a stage crossed by BPDA, an unconstrained-attack failure) or the probe broke something
  the gradient attacks missed; elsewhere they are recorded as skipped (``arena.conditions``). On the benchmark's
  1,000-image rows with sound gradients, AutoAttack's nine-target FAB-T broke one sample after its APGD members (on a
  briefly trained ResNet-18) and none on the PGD-trained models (``docs/benchmarks.md``). Where they run, the random
  search decides the result and one run of it is a draw, so Square restarts once on what its first run left.
"""

from __future__ import annotations

from typing import Any

from arena import Param, Suite, hookimpl

#: Where the suite's discarding stops a sample: after 15 of APGD's 100 iterations, when its closest iterate is still
#: more than 0.15 from the boundary in DLR's units ((z_true − z_other) / (z_top1 − z_top3)) and came less than 0.05
#: closer over iterations 5 to 15. Fitted on the margin traces of APGD-CE and APGD-T (three MALT targets) on seven
#: rows of the benchmark (four adversarially trained models, L∞ 8/255 and 0.1): of the 24 samples that broke after
#: iteration 15, 23 had come within 0.092 or closed in by 0.080 or more (the other sat still between 0.15 and 0.2),
#: and 87 % of the survivors' runs were neither (docs/benchmarks.md, ``python -m benchmarks.discarding``).
DISCARD = {"discard_after": 15, "discard_margin": 0.15, "discard_progress": 0.05}


class FastSuite(Suite):
    """APGD-CE and APGD-T with early exit and discarding, a short Square probe; FAB-T and Square where checks fire."""

    name = "fast"
    params = {
        "targets": Param(int, 3, "target classes of APGD-T, most promising first (AutoAttack tries 9)", ge=1, le=9),
        "probe_queries": Param(int, 100, "queries of the Square probe on the samples the gradient attacks left", ge=1),
    }

    def attacks(self) -> list[dict[str, Any]]:
        doubts = ["gradients", "black_box"]
        return [
            {"name": "early_apgd_ce", **DISCARD},
            {"name": "early_apgd_t", "n_target_classes": self.targets, "ranking": "malt", **DISCARD},
            {"name": "square", "n_queries": self.probe_queries, "label": "square_probe"},
            {"name": "fab_t", "n_target_classes": 1, "when": doubts},
            {"name": "square", "n_restarts": 2, "when": doubts},
        ]


@hookimpl
def arena_register_suites(register) -> None:
    register(FastSuite)
