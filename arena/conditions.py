"""When a conditional attack runs (an entry's ``when:``): read from the checks and results of the attacks played
before it in its cascade, so that expensive attacks run only where the evaluation's own checks say the cheaper
gradient attacks may be failing. A member whose conditions all fail is recorded as ``skipped``, with the reason."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from arena.indicators import unconstrained_failed
from arena.records import Matchup, Status

#: ``gradients``: a gradient attack before it had a reason to doubt its gradients (zero input gradients, forward
#: passes that disagree, probability outputs, a non-differentiable stage crossed by BPDA or not at all, a
#: randomized stage averaged by EOT, an unconstrained-attack failure of ``arena.indicators`` that no earlier
#: attack's success across the whole box contradicts); ``black_box``: a gradient-free attack before it broke a
#: sample that the gradient attacks before it had missed.
Condition = Literal["gradients", "black_box"]
CONDITIONS: tuple[str, ...] = ("gradients", "black_box")


def gradient_doubts(before: list[Matchup]) -> list[str]:
    """Why the gradients the earlier white-box attacks followed may be unreliable, one reason per finding.

    An unconstrained-attack failure doubts the gradients only when no earlier white-box attack broke its whole
    unconstrained probe: once the gradients carried one attack across the box, another's failure there is its own
    optimiser's (FAB-T toward one class on the CNN-LSTM, README), not evidence against the gradients."""
    white_box = [m for m in before if m.status == Status.OK and m.white_box]
    crossed = any("broken" in (m.checks.get("unconstrained") or {}) and not unconstrained_failed(m.checks)
                  for m in white_box)
    found = []
    for m in white_box:
        checks, gradient = m.checks, m.gradient
        if checks.get("zero_gradient"):
            found.append(f"{m.attack}: {checks['zero_gradient']} of {checks['checked']} probed samples have a zero "
                         "input gradient")
        if checks.get("nondeterministic"):
            found.append(f"{m.attack}: forward passes disagree (randomness)")
        if checks.get("probabilities"):
            found.append(f"{m.attack}: the model returns probabilities")
        if unconstrained_failed(checks) and not crossed:
            box = checks["unconstrained"]
            found.append(f"{m.attack}: with an ε covering the whole box it broke only {box['broken']} of "
                         f"{box['checked']} probed samples (unconstrained attack failure)")
        found += [f"{m.attack}: {', '.join(stages)} {what}" for stages, what in (
            (gradient.get("bpda"), "crossed by BPDA"), (gradient.get("masked"), "crossed with no gradient"),
            (gradient.get("randomized"), "randomized, averaged by EOT")) if stages]
    return found


def _robust(m: Matchup) -> np.ndarray:
    """A finished matchup's per-sample robust mask (every ``ok`` matchup has one)."""
    assert m.robust_correct is not None, "an ok matchup records its robust samples"
    return m.robust_correct


def black_box_wins(before: list[Matchup]) -> list[str]:
    """Gradient-free attacks that broke samples which every earlier gradient attack that ran on them missed."""
    found = []
    for m in (m for m in before if m.status == Status.OK and m.gradient.get("gradient_free")):
        broken = m.attacked_mask & ~_robust(m)
        for w in (w for w in before if w.status == Status.OK and w.white_box):
            broken &= ~(w.attacked_mask & ~_robust(w))
        if broken.any():
            found.append(f"{m.attack} broke {int(broken.sum())} samples the gradient attacks missed")
    return found


def reasons(when: Sequence[str], before: list[Matchup]) -> list[str]:
    """The findings that let an entry with these conditions run; empty means it is skipped."""
    readers = {"gradients": gradient_doubts, "black_box": black_box_wins}
    return [reason for condition in when for reason in readers[condition](before)]


def skip_reason(when: Sequence[str], before: list[Matchup], left: int) -> str:
    """Why an entry was skipped (with how many samples it would have attacked), for its record and the leaderboard."""
    ran = ", ".join(m.attack for m in before) or "no attack"
    return f"not run on the {left} samples left: none of its conditions ({', '.join(when)}) held after {ran}"
