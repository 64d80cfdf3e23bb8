"""Every evaluation checks itself, as AutoAttack's ``checks.py`` does, and says why a number may not be trusted.

Measured while a matchup runs (stored in its ``checks``): whether the model returns probabilities, whether five
forward passes agree, how many samples have a zero input gradient, whether the attack's best margin was still rising
at its end, and, for single-step attacks, accuracy on the attacked images over all samples (label leaking). Read
from the stored per-sample results: an iterative attack weaker than a single-step one on the same samples, and a
black-box or transfer attack breaking samples that every white-box attack missed. Each finding becomes a trust flag
with its reason (Carlini et al. 2019, "On Evaluating Adversarial Robustness"; Pintor et al. 2022, "Indicators of
Attack Failure").
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from arena.active import PASS_SHARE
from arena.indicators import UNSTABLE_SHARE, unconstrained_failed
from arena.model_checks import Once, fresh
from arena.records import GradientPath, Matchup, Status

#: Samples of the first attacked batch the probe looks at (AutoAttack's checks look at one batch too).
PROBE_SAMPLES = 100
#: Forward passes compared by the determinism check, and how far (normalised logits) they may differ.
DETERMINISM_PASSES = 5
DETERMINISM_TOLERANCE = 1e-4
#: Share of the output rows' slack allowed before outputs count as probabilities.
PROBABILITY_TOLERANCE = 1e-5
#: An attack has not converged when its last 10 % of iterations brought more than this share of its whole progress.
CONVERGENCE_SHARE = 0.05
CONVERGENCE_MIN_CALLS = 10
#: Differences below this (half a sample in a hundred) are noise, not a finding; the leaderboard's flags use it too.
TOLERANCE = 0.005
#: AutoAttack's ``check_square_sr`` threshold: a black-box attack breaking more than this share past the white-box
#: attacks is a finding.
BLACK_BOX_TOLERANCE = 0.002


def probe(
    target: nn.Module, attacked: nn.Module, images: torch.Tensor, labels: torch.Tensor, once: Once = fresh,
) -> dict[str, Any]:
    """The checks one batch answers: ``probabilities`` (the module the attack differentiates returns rows summing to
    1), ``nondeterministic`` (the judged module's forward passes disagree), ``zero_gradient`` of ``checked`` samples
    (the first ``PROBE_SAMPLES`` of the batch). Properties of the defended model: ``once`` shares them among its
    attacks."""
    images, labels = images[:PROBE_SAMPLES], labels[:PROBE_SAMPLES]
    return {**once("outputs", lambda: outputs(target, attacked, images)),
            "zero_gradient": once("zero_gradient", lambda: zero_gradients(attacked, images, labels), gradient=True),
            "checked": len(images)}


def outputs(target: nn.Module, attacked: nn.Module, images: torch.Tensor) -> dict[str, bool]:
    """Whether ``attacked`` returns ``probabilities`` and whether ``target``'s forward passes disagree
    (``nondeterministic``) on ``images``."""
    with torch.no_grad():
        outputs = [target(images).float() for _ in range(DETERMINISM_PASSES)]
        seen = attacked(images).float()
    unit = [o / o.norm(dim=1, keepdim=True).clamp_min(1e-10) for o in outputs]
    spread = max(float((a - b).norm(dim=1).max()) for a in unit for b in unit)
    disagree = any(not torch.equal(o.argmax(1), outputs[0].argmax(1)) for o in outputs)
    slack = PROBABILITY_TOLERANCE
    probabilities = bool(seen.min() > -slack and seen.max() < 1 + slack and ((seen.sum(1) - 1).abs() < slack).all())
    return {"probabilities": probabilities, "nondeterministic": disagree or spread > DETERMINISM_TOLERANCE}


def zero_gradients(attacked: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> int:
    """Samples whose cross-entropy input gradient through ``attacked`` is all zero."""
    x = images.clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(F.cross_entropy(attacked(x), labels, reduction="sum"), x)
    return int((grad.flatten(1).abs().sum(1) == 0).sum())


def convergence(traces: list[torch.Tensor]) -> dict[str, Any] | None:
    """From per-batch margin traces (``[calls, batch]``), how much the best margin of the samples the attack never
    broke rose in all and in its last 10 % of calls; None for attacks with too few gradient steps to tell. A sample
    with NaN in its column was dropped by an early-exit attack (broken) or never attacked: it is left out."""
    traces = [t for t in traces if t.dim() == 2 and len(t) >= CONVERGENCE_MIN_CALLS]
    if not traces:
        return None
    total = late = 0.0
    robust = 0
    for trace in traces:
        best = trace.cummax(0).values
        kept = (best[-1] < 0) & ~trace.isnan().any(0)
        mark = int(0.9 * len(best)) - 1
        total += float((best[-1] - best[0])[kept].sum())
        late += float((best[-1] - best[mark])[kept].sum())
        robust += int(kept.sum())
    return {"calls": max(len(t) for t in traces), "robust": robust, "rise": total, "late_rise": late}


def single_step(backward_passes: int | None, attacked: int, gradient: GradientPath) -> bool | None:
    """Whether an attack took at most one gradient step per attacked sample (None when that was not counted)."""
    if backward_passes is None or not attacked:
        return None
    return backward_passes <= attacked * max(1, int(gradient.get("eot_samples", 1)))


def _single_step(m: Matchup) -> bool | None:
    attacked = m.attacked_mask
    return single_step(m.backward_passes, int(attacked.sum()) if attacked is not None else 0, m.gradient)


def flags(group: list[Matchup]) -> list[str]:
    """The trust flags of one model × defense from its matchups' checks and per-sample results."""
    ok = [m for m in group if m.status == Status.OK]
    found = []
    if any(m.checks.get("probabilities") for m in ok):
        found.append("the model returns probabilities (rows sum to 1), not logits: gradient attacks on a saturated "
                     "softmax are weak; return logits")
    if any(m.checks.get("nondeterministic") for m in ok) and not any(m.gradient.get("eot_samples", 1) > 1 for m in ok):
        found.append(f"{DETERMINISM_PASSES} forward passes disagree (a randomized defense?) and no attack used EOT; "
                     "declare the stage `randomized = True` (undeclared noise is never averaged), then add "
                     "`eot_samples: 20` to the gradient attacks")
    found += _indicators(ok)
    for m in ok:
        zero = m.checks.get("zero_gradient", 0)
        if zero and not m.gradient.get("masked"):
            found.append(f"{m.attack}: {zero} of {m.checks['checked']} attacked samples have a zero input gradient "
                         f"(unavailable gradients, Pintor et al.): {_zero_cause(m.checks)}")
        rise = m.checks.get("convergence")
        if rise and rise["late_rise"] > CONVERGENCE_SHARE * rise["rise"] and rise["late_rise"] > 1e-3 * rise["robust"]:
            found.append(f"{m.attack} had not converged (incomplete optimisation, Pintor et al.): the best margin of "
                         "the samples it did not break still rose "
                         f"by {rise['late_rise']:.3g} in its last 10% of {rise['calls']} steps ({rise['rise']:.3g} in "
                         "all); give it more iterations or restarts")
        leaked = m.checks.get("accuracy_all")
        if leaked is not None and m.clean_accuracy is not None and leaked > m.clean_accuracy + TOLERANCE:
            found.append(f"label leaking: {m.attack}'s images are classified correctly on {leaked:.1%} of all samples, "
                         f"above the clean {m.clean_accuracy:.1%}; the model reads the perturbation, so this attack "
                         "understates its strength")
    found += _weaker_iterative(ok)
    return found


def _zero_cause(checks: dict[str, Any]) -> str:
    """What a zero input gradient comes from, told by the margin's gradient (``indicators.saturated``), and the fix."""
    if checks.get("saturated"):
        return (f"{checks['saturated']} of them have a nonzero margin gradient, so the softmax saturates (logits "
                "scaled up at inference, a distilled model at temperature 1); add an attack with a margin loss "
                "(`apgd_dlr`, the `fast` suite) or a gradient-free one such as `square`")
    return ("a stage without a gradient (rounding, quantisation) that says it is differentiable; declare it "
            "`differentiable = False` so that `bpda: true` crosses it, or add a gradient-free attack such as `square`")


def _indicators(ok: list[Matchup]) -> list[str]:
    """Flags from the indicators of attack failure measured with each matchup (``arena.indicators``)."""
    found = []
    for m in ok:
        attacked = int(m.attacked_mask.sum()) if m.attacked_mask is not None else 0
        silent = m.checks.get("silent_success", 0)
        if silent > TOLERANCE * attacked and not m.gradient.get("randomized"):  # a random judge is no finding
            found.append(f"{m.attack}: silent success (Pintor et al.): {silent} samples were misclassified at some "
                         "step of the attack but not at the point it returned; it does not keep its best iterate: "
                         "add one that does (`apgd_ce`, the `fast` suite)")
        box = m.checks.get("unconstrained") or {}
        if "error" in box:
            found.append(f"{m.attack}: unconstrained attack not run (it refused an ε covering the whole box: "
                         f"{box['error']})")
        elif unconstrained_failed(m.checks):
            found.append(f"{m.attack}: unconstrained attack failure (Pintor et al.): with an ε covering the whole "
                         f"[0, 1] box it broke only {box['broken']} of {box['checked']} samples, so it fails whatever "
                         "the ε (step size, iterations, loss, or gradients); fix its step size or iterations, add "
                         "`bpda: true` for a declared non-differentiable stage, or a gradient-free attack such as "
                         "`square` (the `fast` suite)")
    for m in ok:
        found += _binarization(m)
    shaky = [m for m in ok if m.checks.get("unstable", 0) > UNSTABLE_SHARE and m.white_box]
    if shaky and not any(m.gradient.get("eot_samples", 1) > 1 for m in ok):
        worst = max(shaky, key=lambda m: m.checks["unstable"])
        found.append(f"unstable predictions (Pintor et al.): {worst.checks['unstable']:.0%} of the predictions "
                     "change under uniform noise of radius ε/2, so one gradient is a poor guide; add `eot_samples: 20` "
                     "to the gradient attacks (declaring the noisy stage `randomized = True`)")
    return found


def _binarization(m: Matchup) -> list[str]:
    """The flag of a matchup's binarization test (``arena.active``): failed, or not run on this model."""
    test = m.checks.get("binarization")
    if not test:
        return []
    if "error" in test:
        return [f"{m.attack}: binarization test not run: {test['error']}"]
    valid = test["tested"] - test["setup_failed"]
    if valid and test["passed"] < PASS_SHARE * valid:
        return [f"{m.attack}: binarization test failed (Zimmermann et al.): it found the planted adversarial on "
                f"{test['passed']} of {valid} samples ({test['setup_failed']} of {test['tested']} setups failed); the "
                "attack misses adversarials known to exist, so its robust accuracy overstates: give it more steps or "
                "restarts, `bpda: true` / `eot_samples: 20` where gradients are masked or random, or add `square` "
                "(the `fast` suite)"]
    return []


def _weaker_iterative(ok: list[Matchup]) -> list[str]:
    """An iterative white-box attack leaving more samples robust than a single-step one, on the samples both ran on."""
    found = []
    white = [m for m in ok if m.white_box]
    for it in (m for m in white if _single_step(m) is False):
        for one in (m for m in white if _single_step(m)):
            both = it.ran_on & one.ran_on
            gap = int((it.robust & both).sum()) - int((one.robust & both).sum())
            if both.any() and gap > TOLERANCE * len(both):
                found.append(f"iterative {it.attack} leaves {gap} more samples robust than single-step {one.attack} "
                             f"on the {int(both.sum())} both attacked; the iterative attack is failing (step size, "
                             "iterations, masked gradients)")
    return found


def beyond_white_box(m: Matchup, white: list[Matchup]) -> int:
    """How many samples ``m`` (a black-box or transfer attack) broke that every white-box attack which ran on them
    missed; more than ``BLACK_BOX_TOLERANCE`` of the samples means the white-box gradients may be masked."""
    broken = m.ran_on & ~m.robust
    for w in white:
        broken &= ~(w.ran_on & ~w.robust)  # w broke it too: not a finding
    ran = np.logical_or.reduce([w.ran_on for w in white]) if white else np.zeros_like(broken)
    beyond = int((broken & ran).sum())
    return beyond if beyond > BLACK_BOX_TOLERANCE * len(broken) else 0
