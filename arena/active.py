"""The binarization test (Zimmermann, Brendel, Tramèr, Carlini, NeurIPS 2022): an active test that plants an
adversarial example the attack must find.

Per sample, the defended model's classifier head (its last ``nn.Linear``, the one whose output are the logits) is
replaced by a binary head on the same penultimate features: class 0 for points inside (1 − gap)·ε of the clean image,
class 1 for one planted point on the ε-sphere. The head is fitted (logistic regression) to separate them all, else the
sample's setup failed, then calibrated as the paper's reference code does: the boundary sits just before the planted
point and the logits span a unit range (unscaled, they saturate the attack's softmax). The unchanged attack (same
module, so the same BPDA and EOT settings) then runs from the clean image: it passes when it returns a point of class
1 within the threat model, which exists by construction. Written from the paper's description.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from arena.cost import Counted
from arena.kinds import Attack
from arena.threat import ThreatModel

#: Points drawn inside (1 − GAP)·ε per sample (the paper uses 999), the gap, and where the calibrated boundary sits
#: between the highest inner score (0) and the planted point's (1).
INNER_POINTS = 199
GAP = 0.05
CLOSENESS = 0.9999
#: The active tests a scenario (``active_tests:``) or ``arena run --active-tests`` may ask for.
ACTIVE_TESTS = ("binarization",)
#: Below this share of passed tests (among samples whose setup succeeded) the attack's numbers are flagged.
PASS_SHARE = 0.8


class ActiveTestError(Exception):
    """The binarization test cannot run on this model; the message says what it needs."""


@dataclass
class Binarization:
    """One attack's binarization test: samples ``tested``, ``passed`` (the attack found the planted adversarial
    region), ``setup_failed`` (no binary head separated the planted point), and the attack's ``passes``."""

    tested: int
    passed: int
    setup_failed: int
    passes: int

    @property
    def pass_rate(self) -> float | None:
        """Share of the samples whose setup succeeded on which the attack passed."""
        valid = self.tested - self.setup_failed
        return self.passed / valid if valid else None


def last_linear(net: nn.Module, images: torch.Tensor) -> nn.Linear:
    """The last ``nn.Linear`` a forward pass of ``net`` calls, which must produce its logits (the classifier head)."""
    called: list[nn.Linear] = []
    handles = [m.register_forward_hook(lambda m, i, o: called.append(m)) for m in net.modules()
               if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            logits = net(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    if not called or called[-1].out_features != logits.shape[1]:
        raise ActiveTestError(
            f"the binarization test needs the model's logits to come from a final nn.Linear on its penultimate "
            f"features; {type(net).__name__} has {'none' if not called else 'one, but not producing the logits'}: "
            "leave `active_tests` out for this model")
    return called[-1]


class _Head:
    """Replaces the output of ``layer`` (the classifier) by ``[0, w·features + b]`` while installed; with ``w``
    None it records the features instead and leaves the output alone."""

    def __init__(self, layer: nn.Linear) -> None:
        self.w: torch.Tensor | None = None
        self.b = 0.0
        self.features: torch.Tensor | None = None
        self.handle = layer.register_forward_hook(self._hook)

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """The binary head's class-1 logit, in float64: the calibrated margin of the planted point (about 1e-4 of
        the unit logit range) must not drown in float32 rounding."""
        assert self.w is not None, "the head is fitted before it scores"
        return features.flatten(1).double() @ self.w + self.b

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        if self.w is None:
            self.features = inputs[0].flatten(1).detach()
            return output
        score = self.score(inputs[0])
        return torch.stack([torch.zeros_like(score), score], 1).to(output.dtype)


def _inside(images: torch.Tensor, threat: ThreatModel, radius: float, count: int) -> torch.Tensor:
    """``count`` points drawn uniformly in the ball of ``radius`` around one image (batch of 1), clipped to [0, 1]."""
    shape = (count, *images.shape[1:])
    if threat.norm == "linf":
        delta = torch.empty(shape, device=images.device).uniform_(-radius, radius)
    else:
        direction = torch.randn(shape, device=images.device)
        direction /= direction.flatten(1).norm(dim=1).view(-1, *[1] * (images.dim() - 1))
        scale = torch.rand(count, device=images.device) ** (1 / images[0].numel()) * radius
        delta = direction * scale.view(-1, *[1] * (images.dim() - 1))
    return (images + delta).clamp(0, 1)


def _planted(images: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """A random point on the ε-sphere (an L∞ corner, or an L2 direction at length ε), clipped to [0, 1]."""
    if threat.norm == "linf":
        delta = threat.eps * torch.randint(0, 2, images.shape, device=images.device).float().mul(2).sub(1)
    else:
        delta = torch.randn_like(images)
        delta *= threat.eps / delta.norm()
    return (images + delta).clamp(0, 1)


def fit_head(inner: torch.Tensor, planted: torch.Tensor) -> tuple[torch.Tensor, float] | None:
    """A logistic-regression head (balanced classes, float64) scoring the planted feature row above every inner one,
    calibrated so its boundary sits ``CLOSENESS`` of the way from the highest inner score to the planted point's and
    rescaled so the scores of all rows span 1 (the reference's fixed logit rescaling: a separable fit's weights grow
    without bound, and logits of -100 or less saturate the attack's softmax to an exactly zero gradient); None when
    the fit leaves some inner row at or above the planted one."""
    rows = torch.cat([inner, planted]).double()
    # standardised over all rows: a feature constant on the inner points but not at the planted one gets a finite scale
    mean, scale = rows.mean(0), rows.std(0)
    scale = scale.clamp_min(1e-6 * float(scale.max()) + 1e-12)
    x = (rows - mean) / scale
    # fitted in its dual form, w = xᵀα (the L2-penalised optimum lies in the rows' span): 200 unknowns, not thousands
    gram = x @ x.T
    y = torch.cat([torch.zeros(len(inner)), torch.ones(1)]).to(x)
    weights = torch.cat([torch.full((len(inner),), 0.5 / len(inner)), torch.tensor([0.5])]).to(x)
    alpha = torch.zeros(len(x), dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([alpha, b], max_iter=20, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        fitted = gram @ alpha
        loss = (F.binary_cross_entropy_with_logits(fitted + b, y, reduction="none") * weights).sum()
        loss = loss + 1e-4 * alpha @ fitted
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        scores = gram @ alpha + b
        top, target = float(scores[:-1].max()), float(scores[-1])
        if not top < target:  # no bias makes it 100 % accurate; the calibration below picks the bias
            return None
        spread = target - float(scores.min())
        weight = x.T @ alpha / scale / spread
        return weight, (float(b) - (top + CLOSENESS * (target - top))) / spread - float(mean @ weight)


def binarization(
    attack: Attack, counted: Counted, net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
    threat: ThreatModel,
) -> Binarization:
    """Run the binarization test of ``attack`` (built on ``counted``, which wraps the defended model containing
    ``net``) on each of ``images`` whose clean prediction is right; ``labels`` are their true classes. The binary
    head has one target class: an attack that declares ``n_target_classes`` runs with one."""
    layer = last_linear(net, images)
    if getattr(attack, "n_target_classes", 1) > 1 and "n_target_classes" in attack.params:
        attack = attack.rebuilt(threat, n_target_classes=1)
    head = _Head(layer)
    tested = passed = failed = 0
    with head.handle, counted.apart() as passes:  # the hook's handle removes it on the way out
        for image, label in zip(images.split(1), labels.split(1)):
            head.w = None
            with torch.no_grad():
                if int(counted.module(image).argmax(1)) != int(label):
                    continue
                counted.module(_inside(image, threat, (1 - GAP) * threat.eps, INNER_POINTS))
                inner = head.features
                counted.module(_planted(image, threat))
                planted = head.features
            assert inner is not None and planted is not None, "the hook saw both forward passes"
            tested += 1
            fitted = fit_head(inner, planted)
            if fitted is None:
                failed += 1
                continue
            head.w, head.b = fitted
            zero = torch.zeros(1, dtype=torch.long, device=image.device)
            with torch.no_grad():
                # the clean image must be of class 0 and the planted point of class 1, as the attack will see them
                if int(counted.module(image).argmax(1)) != 0 or not float(head.score(planted)) > 0:
                    failed += 1
                    continue
            adversarial = attack(image, zero).detach()
            inside = bool(threat.measure(adversarial - image)[0] <= threat.eps * (1 + 1e-4) + 1e-6)
            with torch.no_grad():
                passed += int(inside and int(counted.module(adversarial).argmax(1)) == 1)
    return Binarization(tested=tested, passed=passed, setup_failed=failed, passes=passes.forward + passes.backward)


def active_checks(
    attack: Attack, counted: Counted, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel,
) -> dict[str, int | str]:
    """The binarization test of one white-box matchup as stored in its checks: the ``Binarization`` fields, or the
    ``error`` saying why the model cannot be tested or why the attack failed on the binary head (a failing test
    never discards the attack's own results)."""
    net = getattr(counted.module, "net", counted.module)
    try:
        return asdict(binarization(attack, counted, net, images, labels, threat))
    except ActiveTestError as error:
        return {"error": str(error)}
    except Exception as error:  # the attack itself failed on the 2-class head: a result of the test, said so
        return {"error": f"{attack.name} failed on the test's 2-class head ({type(error).__name__}: {error}); the "
                         "attack may assume more classes"}
