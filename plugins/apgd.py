"""The arena's own APGD (Croce and Hein, 2020) and PGD, with per-sample early exit: a sample stops costing network
passes the moment one of its iterates is adversarial (batch compaction).

The original APGD (``pyautoattack``'s ``attack_single_run``) keeps iterating on a broken sample and only drops it
between restarts and target classes. Everything APGD computes per step is per sample (loss, step size, checkpoints,
best point), so dropping a broken sample changes no other sample's trajectory: on the same seed, with the same random
starts drawn over the same samples in the same order, the robust set is the original's, sample by sample, and so are
the returned points of the samples that stay robust (their clean images). A broken sample gets its first adversarial
iterate where the original returns its last one. This holds exactly while the network's output for a sample does not
depend on the batch it is in: a deterministic network, computed the same at every batch size (float64, one thread);
``tests/test_apgd.py`` checks it against the original and ``benchmarks/early_exit.py`` measures it on trained models.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from arena import Attack, Counted, Param, ThreatModel, hookimpl
from arena_plugins.autoattack import APGD_PARAMS, margin_loss
from arena_plugins.pgd import PGD


def _size(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample L∞ or L2 size of ``x``, shaped to broadcast over it (the original's ``normalize`` and ``L2_norm``)."""
    flat = x.reshape(len(x), -1)
    size = flat.abs().max(1)[0] if norm == "linf" else (flat**2).sum(-1).sqrt()
    return size.view(-1, *[1] * (x.dim() - 1))


def _unit(x: torch.Tensor, norm: str) -> torch.Tensor:
    """``x`` scaled to unit size per sample (zero stays zero)."""
    return x / (_size(x, norm) + 1e-12)


def _project_l2(x: torch.Tensor, point: torch.Tensor, eps: float) -> torch.Tensor:
    """``point`` moved into the L2 ball of radius ``eps`` around ``x`` along its direction, then into [0, 1]."""
    delta = point - x
    return (x + _unit(delta, "l2") * _size(delta, "l2").clamp(max=eps)).clamp(0.0, 1.0)


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Untargeted DLR: the best other logit's lead over the true one, over the top-1 minus top-3 spread; with fewer
    than 3 classes (the binarization test's 2-class head) its substitute, that lead alone (``margin_loss``)."""
    if logits.shape[1] < 3:
        return margin_loss(logits, labels)
    ordered, order = logits.sort(dim=1)
    top_is_true = (order[:, -1] == labels).float()
    rows = torch.arange(len(logits), device=logits.device)
    lead = logits[rows, labels] - ordered[:, -2] * top_is_true - ordered[:, -1] * (1.0 - top_is_true)
    return -lead / (ordered[:, -1] - ordered[:, -3] + 1e-12)


def dlr_loss_targeted(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Targeted DLR: the target logit's lead over the true one, over the top-1 minus mean of top-3 and top-4; with
    fewer than 4 classes (the binarization test's 2-class head) its substitute, that lead alone (``margin_loss``)."""
    if logits.shape[1] < 4:
        return margin_loss(logits, labels, targets)
    ordered = logits.sort(dim=1)[0]
    rows = torch.arange(len(logits), device=logits.device)
    lead = logits[rows, labels] - logits[rows, targets]
    return -lead / (ordered[:, -1] - 0.5 * (ordered[:, -3] + ordered[:, -4]) + 1e-12)


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": _cross_entropy, "dlr": dlr_loss, "dlr-targeted": dlr_loss_targeted}

#: Online discarding (A³'s idea, Liu et al. 2022, as a per-sample rule): a sample that by iteration
#: ``discard_after`` is still farther than ``discard_margin`` from the boundary and no longer approaching it (its
#: closest margin fell by less than ``discard_progress`` over the last two thirds of those iterations) stops costing
#: passes and counts as robust to this run. Off by default (the attack is then the original's, sample by sample); a
#: trade, not an exact shortcut, so the ``fast`` suite states and measures its bound against AutoAttack.
DISCARD_PARAMS = {
    "discard_after": Param(int, 0, "iteration at which samples far from the boundary and stalled are dropped "
                                   "(0: never)", ge=0),
    "discard_margin": Param(float, 0.5, "the DLR-scaled margin above which a sample may be dropped (the true "
                                        "logit's lead over the best other one, over the top-1 − top-3 spread)", gt=0),
    "discard_progress": Param(float, 0.1, "a sample whose closest margin fell by at least this over the last two "
                                          "thirds of the iterations before discard_after is kept", gt=0),
}


def stalled(closest: torch.Tensor, earlier: torch.Tensor, margin: float, progress: float) -> torch.Tensor:
    """The samples online discarding drops: their closest margin still above ``margin`` and less than ``progress``
    below ``earlier`` (the closest margin two thirds of the iterations before)."""
    return (closest > margin) & (earlier - closest < progress)


def dlr_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How far each sample is from the boundary, in DLR's scale-free units (minus its untargeted DLR loss), whatever
    class a run aims at: a targeted run breaks a sample on any wrong class. Raw logit leads on a 2-class head."""
    return -dlr_loss(logits, labels, labels)


def _cover(model: nn.Module, rows: torch.Tensor | None) -> None:
    """Tell a pass-counting module which rows of the watched batch the next calls cover."""
    if isinstance(model, Counted):
        model.active(rows)


class _Seeded(Attack):
    """An attack that re-seeds torch on every call with a seed drawn from the matchup's generator, as the original
    AutoAttack attacks do (``_Original`` in ``autoattack.py``), so runs repeat exactly."""

    def __init__(self, model: nn.Module, threat: ThreatModel, **values: Any) -> None:
        super().__init__(model, threat, **values)
        self.seed = int(torch.randint(0, 2**31 - 1, ()))


class EarlyAPGDCE(_Seeded):
    """APGD on the cross-entropy loss with per-sample early exit: the original's robust set at fewer passes."""

    name = "early_apgd_ce"
    params = {**APGD_PARAMS, **DISCARD_PARAMS}
    loss: ClassVar[str] = "ce"

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        torch.random.manual_seed(self.seed)
        torch.cuda.random.manual_seed(self.seed)
        x, y = images.detach(), labels.detach()
        with torch.no_grad():
            logits = self.model(x)
        robust = logits.argmax(1) == y
        adv = x.clone()
        try:
            for targets in self.runs(x, y, logits, robust):
                todo = robust.nonzero().flatten()
                if not len(todo):
                    break
                broken, found = self.run(x[todo], y[todo], y[todo] if targets is None else targets[todo], todo)
                adv[todo[broken]] = found[broken]
                robust[todo[broken]] = False
        finally:
            _cover(self.model, None)
        return adv

    def runs(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, robust: torch.Tensor) -> list[Any]:
        """Each run's per-sample target class (None: untargeted), in the original's order."""
        return [None] * self.n_restarts

    def run(self, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """One APGD run (the original's ``attack_single_run``) that stops on each sample at its first adversarial
        iterate (and, with ``discard_after``, drops the samples far from the boundary and stalled then); returns
        which samples broke and, for those, that iterate."""
        n_iter, norm, eps = self.n_iter, self.threat.norm, self.threat.eps
        start = x + eps * _unit(2 * torch.rand(x.shape).to(x.device) - 1 if norm == "linf"
                                else torch.randn(x.shape).to(x.device), norm)
        x_adv = start.clamp(0.0, 1.0)
        found, broken = x_adv.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        s = SimpleNamespace(x=x, y=y, targets=targets, rows=rows, index=torch.arange(len(x), device=x.device))
        logits, loss, s.grad = self._gradient(x_adv, s)
        s.x_adv, s.x_best, s.x_old = x_adv, x_adv.clone(), x_adv.clone()
        s.grad_best, s.loss_best, s.loss_best_last = s.grad.clone(), loss.clone(), loss.clone()
        s.step = torch.full((len(x), *[1] * (x.dim() - 1)), 2.0 * eps, device=x.device)
        s.losses = torch.zeros(len(x), n_iter, device=x.device)
        s.reduced_last = torch.ones(len(x), dtype=torch.bool, device=x.device)
        # The checkpoint schedule: the first after 22 % of the iterations, then ever closer, at least 6 % apart.
        k, shrink, shortest = max(int(0.22 * n_iter), 1), max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1)
        counter = 0
        s.closest = dlr_margin(logits, s.y)
        s.earlier = s.closest.clone()  # the closest margin two thirds of the iterations before ``discard_after``
        loss = self._exit(s, logits, loss, found, broken)
        for i in range(n_iter):
            if not len(s.index):
                break
            with torch.no_grad():
                momentum, s.x_old = s.x_adv - s.x_old, s.x_adv
                s.x_adv = self._step(s, momentum, 0.75 if i > 0 else 1.0)
            logits, loss, s.grad = self._gradient(s.x_adv, s)
            s.closest = torch.minimum(s.closest, dlr_margin(logits, s.y))
            loss = self._exit(s, logits, loss, found, broken)
            with torch.no_grad():
                s.losses[:, i] = loss
                better = loss > s.loss_best
                s.x_best[better] = s.x_adv[better]
                s.grad_best[better] = s.grad[better]
                s.loss_best[better] = loss[better]
                counter += 1
                if counter == k:
                    halve = self._oscillating(s.losses, i, k) | (~s.reduced_last & (s.loss_best_last >= s.loss_best))
                    s.reduced_last, s.loss_best_last = halve, s.loss_best.clone()
                    s.step[halve] /= 2.0
                    s.x_adv[halve], s.grad[halve] = s.x_best[halve], s.grad_best[halve]
                    k, counter = max(k - shrink, shortest), 0
            if i + 1 == self.discard_after // 3:
                s.earlier = s.closest.clone()
            if i + 1 == self.discard_after and logits.shape[1] >= 4:
                kept = ~stalled(s.closest, s.earlier, self.discard_margin, self.discard_progress)
                vars(s).update({key: value[kept] for key, value in vars(s).items()})
        return broken, found

    def _gradient(self, x_adv: torch.Tensor, s: SimpleNamespace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, per-sample loss and input gradient (averaged over ``eot_iter`` draws) at ``x_adv``."""
        _cover(self.model, s.rows)
        point = x_adv.detach().requires_grad_()
        grad = torch.zeros_like(point)
        for _ in range(self.eot_iter):
            with torch.enable_grad():
                logits = self.model(point)
                loss = LOSSES[self.loss](logits, s.y, s.targets)
            grad += torch.autograd.grad(loss.sum(), [point])[0].detach()
        grad /= float(self.eot_iter)
        return logits.detach(), loss.detach(), grad

    @staticmethod
    def _exit(s: SimpleNamespace, logits: torch.Tensor, loss: torch.Tensor, found: torch.Tensor,
              broken: torch.Tensor) -> torch.Tensor:
        """Record the samples whose current iterate is adversarial and drop them from ``s``; the others' losses."""
        fooled = logits.argmax(1) != s.y
        if not fooled.any():
            return loss
        found[s.index[fooled]], broken[s.index[fooled]] = s.x_adv[fooled], True
        vars(s).update({key: value[~fooled] for key, value in vars(s).items()})  # every field is per sample
        return loss[~fooled]

    def _step(self, s: SimpleNamespace, momentum: torch.Tensor, a: float) -> torch.Tensor:
        """The next iterate: a step along the gradient's sign (L∞) or direction (L2), projected, then mixed with
        the last move (weight ``1 - a``) and projected again."""
        eps = self.threat.eps
        if self.threat.norm == "linf":
            low, high = s.x - eps, s.x + eps
            moved = (s.x_adv + s.step * torch.sign(s.grad)).clamp(low, high).clamp(0.0, 1.0)
            return (s.x_adv + (moved - s.x_adv) * a + momentum * (1 - a)).clamp(low, high).clamp(0.0, 1.0)
        moved = _project_l2(s.x, s.x_adv + s.step * _unit(s.grad, "l2"), eps)
        return _project_l2(s.x, s.x_adv + (moved - s.x_adv) * a + momentum * (1 - a), eps)

    def _oscillating(self, losses: torch.Tensor, i: int, k: int) -> torch.Tensor:
        """Samples whose loss rose in at most a share ``rho`` of the last ``k`` steps (the original's
        ``check_oscillation``, whose first look back wraps around to the last, still zero, column)."""
        rises = torch.zeros(len(losses), device=losses.device)
        for back in range(k):
            rises += (losses[:, i - back] > losses[:, i - back - 1]).float()
        return rises <= k * self.rho * torch.ones_like(rises)


class EarlyAPGDDLR(EarlyAPGDCE):
    """APGD on the DLR loss (untargeted) with per-sample early exit: the original's robust set at fewer passes."""

    name = "early_apgd_dlr"
    loss = "dlr"


class EarlyAPGDT(EarlyAPGDCE):
    """Targeted APGD on the DLR loss with per-sample early exit, one run per target class; targets ranked by the
    clean logits (the original's order) or by MALT's linearised distance."""

    name = "early_apgd_t"
    params = {
        **APGD_PARAMS,
        **DISCARD_PARAMS,
        "n_target_classes": Param(int, 9, "target classes tried, most promising first", ge=1),
        "ranking": Param(str, "logits", "target order: logits (most likely wrong class first, the original's) or "
                                        "malt (smallest linearised distance first, Melamed et al. 2024)",
                         choices=("logits", "malt")),
    }
    loss = "dlr-targeted"

    def runs(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, robust: torch.Tensor) -> list[Any]:
        classes = logits.shape[1]
        ranked = self._malt(x, y, robust, classes) if self.ranking == "malt" else logits.sort(dim=1)[1].flip(1)[:, 1:]
        count = min(self.n_target_classes, classes - 1)
        return [ranked[:, j] for j in range(count) for _ in range(self.n_restarts)]

    def _malt(self, x: torch.Tensor, y: torch.Tensor, robust: torch.Tensor, classes: int) -> torch.Tensor:
        """Per sample, the wrong classes by MALT's score (z_y − z_t) / ‖∇ₓ(z_y − z_t)‖ in the dual norm, smallest
        first: one forward and one backward per wrong class on the still-robust samples, all counted."""
        todo = robust.nonzero().flatten()
        ranked = torch.zeros(len(x), classes - 1, dtype=torch.long, device=x.device)
        if not len(todo):
            return ranked
        _cover(self.model, todo)
        point = x[todo].clone().requires_grad_()
        with torch.enable_grad():
            logits = self.model(point)
        wrong = torch.arange(classes - 1, device=x.device).expand(len(todo), -1)
        wrong = wrong + (wrong >= y[todo, None]).long()  # every class but the true one
        dual = 1 if self.threat.norm == "linf" else 2
        scores = torch.empty(wrong.shape, device=x.device)
        for j in range(classes - 1):
            gap = logits.gather(1, y[todo, None]) - logits.gather(1, wrong[:, j:j + 1])
            (grad,) = torch.autograd.grad(gap.sum(), point, retain_graph=j < classes - 2)
            scores[:, j] = gap.detach().squeeze(1) / grad.flatten(1).norm(p=dual, dim=1).clamp_min(1e-12)
        ranked[todo] = wrong.gather(1, scores.argsort(dim=1))
        return ranked


class EarlyPGD(Attack):
    """PGD on torchattacks' PGD / PGDL2 trajectory that stops on each sample at its first adversarial iterate.

    Until a sample's iterate is adversarial its trajectory is torchattacks' (same random start, gradient, step and
    projection); torchattacks then goes on and may step out again, so a sample robust here is robust there: per
    sample, this robust set is a subset of torchattacks' (last-iterate) robust set, at fewer passes.
    """

    name = "early_pgd"
    params = PGD.params

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        eps, steps = self.threat.eps, self.steps
        alpha = self.step_size or 2.5 * eps / steps
        x, y = images.detach(), labels.detach()
        adv = self._start(x) if self.random_start else x.clone()
        alive = torch.arange(len(x), device=x.device)
        try:
            for _ in range(steps):
                _cover(self.model, alive)
                point = adv[alive].requires_grad_()
                with torch.enable_grad():
                    logits = self.model(point)
                    # torchattacks' mean over the whole batch: the same gradient scale, bit for bit, as samples leave
                    cost = F.cross_entropy(logits, y[alive], reduction="sum") / len(x)
                (grad,) = torch.autograd.grad(cost, point)
                going = logits.argmax(1) == y[alive]
                alive, grad = alive[going], grad[going]
                if not len(alive):
                    break
                adv[alive] = self._step(x[alive], adv[alive], grad, alpha)
        finally:
            _cover(self.model, None)
        return adv

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        """torchattacks' random start: uniform in the L∞ box, or a uniform radius along a Gaussian direction (L2)."""
        eps = self.threat.eps
        if self.threat.norm == "linf":
            return torch.clamp(x + torch.empty_like(x).uniform_(-eps, eps), min=0, max=1)
        delta = torch.empty_like(x).normal_()
        size = delta.view(len(x), -1).norm(p=2, dim=1).view(len(x), 1, 1, 1)
        delta *= torch.zeros_like(size).uniform_(0, 1) / size * eps
        return torch.clamp(x + delta, min=0, max=1)

    def _step(self, x: torch.Tensor, adv: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
        """torchattacks' step: along the gradient's sign (L∞) or unit gradient (L2), then projected and clipped."""
        eps = self.threat.eps
        if self.threat.norm == "linf":
            delta = torch.clamp(adv + alpha * grad.sign() - x, min=-eps, max=eps)
            return torch.clamp(x + delta, min=0, max=1)
        grad = grad / (grad.view(len(x), -1).norm(p=2, dim=1) + 1e-10).view(len(x), 1, 1, 1)
        delta = adv + alpha * grad - x
        factor = torch.min(eps / delta.view(len(x), -1).norm(p=2, dim=1), torch.ones(len(x), device=x.device))
        return torch.clamp(x + delta * factor.view(-1, 1, 1, 1), min=0, max=1)


@hookimpl
def arena_register_attacks(register) -> None:
    for cls in (EarlyAPGDCE, EarlyAPGDDLR, EarlyAPGDT, EarlyPGD):
        register(cls)
