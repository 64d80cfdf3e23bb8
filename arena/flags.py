"""Trust flags: why a leaderboard number should not be believed as it stands, from what each matchup recorded
(masked gradients, transfer-only robustness, randomness without EOT, the checks' findings) and from how a row's
worst case moves over an ε sweep. Each flag is one sentence with its reason and the fix.
"""

from __future__ import annotations

import numpy as np

from arena import checks
from arena.checks import TOLERANCE
from arena.records import Matchup, Status
from arena.threat import eps_text

#: A transfer attack's robust accuracy this far above the white-box worst case means the robustness is only apparent.
TRANSFER_GAP = 0.20


def worst_case(matchups: list[Matchup]) -> np.ndarray | None:
    """Per-sample robustness over every valid attack: a sample counts only if every attack failed on it."""
    masks = [m.robust for m in matchups if m.status == Status.OK]
    return np.logical_and.reduce(masks) if masks else None


def _plugin(m: Matchup) -> str | None:
    return m.params.get("attack", {}).get("plugin")


def _robust(m: Matchup) -> float:
    """A finished matchup's robust accuracy (every finished one has it)."""
    assert m.robust_accuracy is not None, f"{m.attack}: {m.status}, no robust accuracy"
    return m.robust_accuracy


def _same_samples(a: Matchup, b: Matchup) -> bool:
    """Whether two matchups attacked all the same initially-correct samples, so their accuracies compare directly
    (a cascaded attack's accuracy is cumulative; ``arena.checks`` compares those sample by sample)."""
    return not a.cascade_after and not b.cascade_after and np.array_equal(a.ran_on, b.ran_on)


def trust_flags(group: list[Matchup]) -> list[str]:
    """Why a row's numbers may overstate robustness, from what each matchup recorded (empty when nothing is wrong)."""
    flags = [f"{m.attack}: {m.status}, left out of the worst case" for m in group if m.status.failed]
    ok = [m for m in group if m.status == Status.OK]
    white = [m for m in ok if m.white_box]
    other = [m for m in ok if not m.white_box]
    for m in other:
        kind = "transfer" if m.gradient.get("source") else "external" if m.gradient.get("external") else \
            "gradient-free"
        beyond = checks.beyond_white_box(m, white)
        if beyond:
            bpda = sorted({stage for w in white for stage in w.gradient.get("bpda", [])})
            advice = (f"the BPDA approximation of {', '.join(bpda)} is weak here: give the stage a closer "
                      "differentiable approximation (estimate_gradient), or attack with more iterations and restarts"
                      if bpda else "gradients may be masked: attack adaptively (BPDA, EOT) or with more iterations")
            flags.append(f"{m.attack} ({kind}) broke {beyond} samples that every white-box attack missed; {advice}")
            continue
        # Else compare with the white-box run of the same attack plugin when there is one, else with the strongest.
        same = [w for w in white if _same_samples(w, m)]
        compared = [w for w in same if _plugin(w) == _plugin(m)] or ([min(same, key=_robust)] if same else [])
        beaten = [w for w in compared if _robust(m) < _robust(w) - TOLERANCE]
        if beaten:
            w = max(beaten, key=_robust)
            flags.append(f"{m.attack} ({kind}) beats white-box {w.attack}: "
                         f"{_robust(m):.1%} < {_robust(w):.1%}; gradients may be masked")
    if white and other:
        best = max(other, key=_robust)
        combined = worst_case(white)
        assert combined is not None, "white holds finished matchups only"
        white_worst = float(combined.mean())
        if best.gradient.get("source") and _robust(best) - white_worst > TRANSFER_GAP:
            flags.append(f"robust only to transfer: {_robust(best):.1%} under {best.attack} but "
                         f"{white_worst:.1%} white-box, so it ranks by the white-box number")
    for m in ok:
        if m.gradient.get("randomized") and m.gradient.get("eot_samples", 1) <= 1 and not m.gradient.get("source"):
            flags.append(f"{m.attack}: randomized defense ({', '.join(m.gradient['randomized'])}) attacked without EOT")
        if m.gradient.get("masked"):
            flags.append(f"{m.attack}: non-differentiable {', '.join(m.gradient['masked'])} attacked without BPDA")
    return flags + checks.flags(group)


#: An L∞ ε at which every image can be moved to the same grey one: an attack that works leaves almost nothing robust.
SATURATING_LINF = 0.5
#: Budgets this small should leave accuracy at its clean value; robust accuracy this far below clean means the
#: predictions are unstable (randomness) or the evaluation is broken.
TINY_EPS = {"linf": 1e-4, "l2": 1e-3}
SANITY_GAP = 0.01


def sweep_flags(
    curves: dict[tuple[str, str], list[tuple[float, float]]], clean: dict[tuple[str, str], float | None] | None = None,
    norm: str | None = None,
) -> dict[tuple[str, str], list[str]]:
    """Rows whose robustness curve is implausible: worst-case accuracy that does not fall as ε grows (the attack, not
    the model, is failing), that stays above chance at an L∞ ε of 0.5 or more, or that is well below clean accuracy
    at a vanishing ε."""
    flagged: dict[tuple[str, str], list[str]] = {}
    for key, points in curves.items():
        points = sorted(points)
        found = []
        # nothing left to fall (already ~0 at the smallest ε) is not a finding
        if len(points) >= 2 and points[0][1] > TOLERANCE and points[-1][1] >= points[0][1] - TOLERANCE:
            found.append(f"robust accuracy does not fall as ε grows ({points[0][1]:.1%} at ε={eps_text(points[0][0])}, "
                         f"{points[-1][1]:.1%} at ε={eps_text(points[-1][0])})")
        large = [(e, a) for e, a in points if norm == "linf" and e >= SATURATING_LINF and a > 0.1]
        if large:
            found.append(f"{large[-1][1]:.1%} robust at ε={eps_text(large[-1][0])}, where every image can be turned "
                         "grey; the attack is failing")
        base = (clean or {}).get(key)
        tiny = [(e, a) for e, a in points if norm in TINY_EPS and e <= TINY_EPS[norm]]
        if base is not None and tiny and tiny[0][1] < base - SANITY_GAP:
            found.append(f"{tiny[0][1]:.1%} robust at ε={tiny[0][0]:.2g} against {base:.1%} clean; at a vanishing ε "
                         "it should equal clean accuracy (unstable predictions?)")
        if found:
            flagged[key] = found
    return flagged
