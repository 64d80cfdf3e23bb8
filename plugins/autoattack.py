"""AutoAttack's attacks and the ``autoattack`` suite, as thin adapters over the original code.

The implementation is ``pyautoattack`` (PyPI), which repackages Croce and Hein's original AutoAttack line for line
(``autopgd_base.py``, ``fab_pt.py``, ``square.py``); only its wrapper class was rewritten, and the arena does not use
it. torchattacks was not chosen: its AutoAttack runs APGD with 10 iterations instead of 100 and its Square with
another schedule (torchattacks issue #196). Every default below is the original ``standard`` version's setting, and
``tests/test_autoattack.py`` checks them against the original wrapper's own attack objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from arena import Attack, Param, Suite, ThreatModel, hookimpl

# pyautoattack is imported in each ``build``, not here: registering, listing and validating need none of it (startup
# time).
if TYPE_CHECKING:
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

NORMS = {"linf": "Linf", "l2": "L2"}


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """DLR's numerator: the target logit's (untargeted: the best other logit's) lead over the true one. DLR's
    substitute on a head with too few classes for its scale (the top-3 and top-4 logits), such as the binarization
    test's 2-class head, whose logits are already calibrated to a unit range."""
    rows = torch.arange(len(logits), device=logits.device)
    if targets is None:
        targets = logits.scatter(1, labels.view(-1, 1), float("-inf")).argmax(1)
    return logits[rows, targets] - logits[rows, labels]


def _with_few_classes(original: Any, classes: int, substitute: Any) -> Any:
    """The original's DLR loss where the logits have at least ``classes`` columns, else ``substitute``."""
    return lambda x, y: original(x, y) if x.shape[1] >= classes else substitute(x, y)


class _Original(Attack):
    """An attack of the original AutoAttack built on the arena's module; the seed is drawn from the matchup's seeded
    generator, so runs repeat exactly (the original re-seeds torch with it on every call)."""

    def __init__(self, model: nn.Module, threat: ThreatModel, **values: Any) -> None:
        super().__init__(model, threat, **values)
        self.seed = int(torch.randint(0, 2**31 - 1, ()))
        self.attack = self.build(NORMS[threat.norm])

    def build(self, norm: str) -> Any:
        """The original attack object, configured from this plugin's parameters."""
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.attack.perturb(images, labels).detach()


#: APGD's parameters, shared by the original attacks here and the early-exit ones of ``apgd``.
APGD_PARAMS = {
    "n_iter": Param(int, 100, "iterations per restart", ge=1),
    "n_restarts": Param(int, 1, "restarts from random points; the best is kept", ge=1),
    "rho": Param(float, 0.75, "step-size halving threshold (checkpoint condition)", gt=0, le=1),
    "eot_iter": Param(int, 1, "gradients averaged per step inside APGD (the arena's eot_samples is the usual way)",
                      ge=1),
}


class APGDCE(_Original):
    """APGD on the cross-entropy loss (Croce and Hein, 2020): AutoAttack's first attack."""

    name = "apgd_ce"
    params = APGD_PARAMS
    loss: ClassVar[str] = "ce"

    def build(self, norm: str) -> APGDAttack:
        from pyautoattack.autopgd_base import APGDAttack

        attack = APGDAttack(self.model, n_iter=self.n_iter, norm=norm, n_restarts=self.n_restarts,
                            eps=self.threat.eps, seed=self.seed, loss=self.loss, eot_iter=self.eot_iter, rho=self.rho)
        attack.dlr_loss = _with_few_classes(attack.dlr_loss, 3, margin_loss)
        return attack


class APGDDLR(APGDCE):
    """APGD on the difference-of-logits-ratio loss (untargeted): with APGD-CE, AutoAttack's ``rand`` version."""

    name = "apgd_dlr"
    loss = "dlr"


class APGDT(_Original):
    """Targeted APGD on the DLR loss, one run per target class (the most likely wrong ones first)."""

    name = "apgd_t"
    params = {**APGD_PARAMS, "n_target_classes": Param(int, 9, "target classes tried, most likely first", ge=1)}

    def build(self, norm: str) -> APGDAttack_targeted:
        from pyautoattack.autopgd_base import APGDAttack_targeted

        attack = APGDAttack_targeted(self.model, n_iter=self.n_iter, norm=norm, n_restarts=self.n_restarts,
                                     eps=self.threat.eps, seed=self.seed, eot_iter=self.eot_iter, rho=self.rho,
                                     n_target_classes=self.n_target_classes)
        attack.dlr_loss_targeted = _with_few_classes(attack.dlr_loss_targeted, 4,
                                                     lambda x, y: margin_loss(x, y, attack.y_target))
        return attack


class FABT(_Original):
    """Targeted FAB (Croce and Hein, 2020): minimal perturbations towards each target class, kept when inside ε."""

    name = "fab_t"
    params = {
        "n_iter": Param(int, 100, "iterations per restart", ge=1),
        "n_restarts": Param(int, 1, "restarts", ge=1),
        "n_target_classes": Param(int, 9, "target classes tried, most likely first", ge=1),
        "alpha_max": Param(float, 0.1, "largest step bias towards the original point", gt=0),
        "eta": Param(float, 1.05, "overshoot factor", gt=0),
        "beta": Param(float, 0.9, "weight of the backward step", gt=0),
    }

    def build(self, norm: str) -> FABAttack_PT:
        from pyautoattack.fab_pt import FABAttack_PT

        return FABAttack_PT(self.model, norm=norm, n_restarts=self.n_restarts, n_iter=self.n_iter,
                            eps=self.threat.eps, alpha_max=self.alpha_max, eta=self.eta, beta=self.beta,
                            seed=self.seed, targeted=True, n_target_classes=self.n_target_classes)


class Square(_Original):
    """Square Attack (Andriushchenko et al., 2020): a score-based random search, no gradients."""

    name = "square"
    gradient_free = True
    params = {
        "n_queries": Param(int, 5000, "queries per sample", ge=1),
        "p_init": Param(float, 0.8, "initial fraction of pixels changed per square", gt=0, le=1),
        "n_restarts": Param(int, 1, "restarts", ge=1),
        "resc_schedule": Param(bool, False, "rescale the p schedule to n_queries (the library's default is True; "
                                            "AutoAttack's standard version sets False)"),
    }

    def build(self, norm: str) -> SquareAttack:
        from pyautoattack.square import SquareAttack

        return SquareAttack(self.model, norm=norm, n_queries=self.n_queries, eps=self.threat.eps, p_init=self.p_init,
                            n_restarts=self.n_restarts, seed=self.seed, resc_schedule=self.resc_schedule)


class AutoAttackSuite(Suite):
    """AutoAttack (Croce and Hein, 2020) as a cascade: ``standard`` is APGD-CE, APGD-T, FAB-T, Square; ``rand`` is
    APGD-CE and APGD-DLR with EOT over 20 draws, for randomized defenses."""

    name = "autoattack"
    params = {"version": Param(str, "standard", "standard or rand", choices=("standard", "rand"))}

    def attacks(self) -> list[dict[str, Any]]:
        if self.version == "rand":
            return [{"name": "apgd_ce", "eot_samples": 20}, {"name": "apgd_dlr", "eot_samples": 20}]
        return [{"name": "apgd_ce"}, {"name": "apgd_t"}, {"name": "fab_t"}, {"name": "square"}]


@hookimpl
def arena_register_attacks(register) -> None:
    for cls in (APGDCE, APGDDLR, APGDT, FABT, Square):
        register(cls)


@hookimpl
def arena_register_suites(register) -> None:
    register(AutoAttackSuite)
