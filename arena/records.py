"""The records a run produces, as plugins and notebooks receive them: a ``Run`` and its ``Matchup``s.

Plain data with no behaviour beyond summaries, so the hook specifications, the store and reporters can share them
without depending on each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypedDict

import numpy as np

from arena.threat import ThreatModel


class Status(StrEnum):
    """How a matchup ended; the values are what the store keeps, so a ``Status`` equals its stored string."""

    #: Played and judged: its numbers count.
    OK = "ok"
    #: Played, but an adversarial batch broke the threat model (the audit's finding is the detail).
    INVALID = "invalid"
    #: The attack, its defense or its model raised (the traceback is the detail).
    ERROR = "error"
    #: A conditional entry none of whose conditions held (the reason is the detail); no passes spent.
    SKIPPED = "skipped"

    @property
    def failed(self) -> bool:
        """Invalid or errored: its numbers are left out of the worst case, and the row says so."""
        return self in (Status.INVALID, Status.ERROR)


class GradientPath(TypedDict, total=False):
    """How an attack got its gradients, recorded with each matchup and read by conditions, checks and flags."""

    #: Non-differentiable stages crossed with their gradient estimate (BPDA).
    bpda: list[str]
    #: Non-differentiable stages that gave no gradient (BPDA off).
    masked: list[str]
    #: Randomized stages, whose gradients are averaged over ``eot_samples`` draws (EOT).
    randomized: list[str]
    eot_samples: int
    #: A transfer attack's source, ``model+defense``.
    source: str
    #: The attack asks the model for outputs only (noise, Square).
    gradient_free: bool
    #: Examples submitted from outside the arena: the submitted file's SHA-256.
    external: str


@dataclass(frozen=True)
class Run:
    """One run of a scenario under one threat model, as the store records it."""

    id: str
    scenario: str
    scenario_path: str
    scenario_digest: str
    #: The scenario file's text, so results can be traced to what produced them.
    scenario_text: str
    arena_version: str
    seed: int
    threat: ThreatModel
    dataset: str
    samples: int
    device: str
    status: str
    started_at: str
    finished_at: str | None = None
    #: Where each model × defense's weights came from: ``{"cnn/none": {"key": ..., "source": "cache"}}``.
    weights: dict[str, Any] = field(default_factory=dict)
    #: The data set's class names, when its plugin declares them (for pictures).
    classes: list[str] = field(default_factory=list)
    #: Every (model, defense, attack) the run set out to play; a finished run holds a matchup for each.
    expected: list[tuple[str, str, str]] = field(default_factory=list)
    #: Content hash of the evaluation images and labels: runs on the same images share it (None before schema 6).
    data_fingerprint: str | None = None
    #: The runtime settings (``precision``, ``compile``, ``channels_last``) the run attacked with.
    runtime: dict[str, Any] = field(default_factory=dict)
    #: The results folder a merged run was imported from (None for a run played into this store).
    origin: str | None = None

    def summary(self) -> dict[str, Any]:
        """Everything but the scenario text, JSON-ready (the threat model as ``norm`` and ``eps``)."""
        fields = {k: v for k, v in self.__dict__.items() if k not in ("scenario_text", "threat")}
        return {**fields, "norm": self.threat.norm, "eps": self.threat.eps}


@dataclass(frozen=True)
class Example:
    """One adversarial example a matchup counted: the sample's index, its true label, the clean and adversarial
    images (exact float values) and the defended model's prediction and confidence on each."""

    sample: int
    label: int
    clean: np.ndarray = field(repr=False)
    adversarial: np.ndarray = field(repr=False)
    predicted_before: int
    predicted_after: int
    confidence_before: float
    confidence_after: float


@dataclass
class Matchup:
    """One model × defense × attack result. ``robust_correct[i]``: sample i was classified right clean and attacked."""

    model: str
    defense: str
    attack: str
    params: dict[str, Any]
    status: Status
    samples: int
    wall_time_s: float
    #: The part of ``wall_time_s`` spent inside the attack's own calls (the rest: checks, judging, auditing); None
    #: for results stored before it was measured and for matchups that never attacked.
    attack_time_s: float | None = None
    #: How the attack got its gradients: ``source`` (transfer), ``bpda``, ``masked``, ``randomized``, ``eot_samples``.
    gradient: GradientPath = field(default_factory=lambda: GradientPath())
    key: str = ""
    reused_from: str | None = None
    detail: str | None = None
    clean_accuracy: float | None = None
    robust_accuracy: float | None = None
    attack_success_rate: float | None = None
    mean_norm: float | None = None
    max_norm: float | None = None
    clean_correct: np.ndarray | None = field(default=None, repr=False)
    robust_correct: np.ndarray | None = field(default=None, repr=False)
    #: The samples the attack ran on: the initially-correct ones, less those an earlier attack of a cascade broke.
    attacked: np.ndarray | None = field(default=None, repr=False)
    #: Network passes (EOT draws included) the attack made, summed over samples; None for results stored before.
    forward_passes: int | None = None
    backward_passes: int | None = None
    #: What the evaluation measured about itself (``arena.checks``), read by the leaderboard's trust flags.
    checks: dict[str, Any] = field(default_factory=dict)
    #: The suite (e.g. ``autoattack``) this attack was expanded from, if any.
    suite: str = ""
    #: The attacks of its cascade that ran before it; empty when it ran on every initially-correct sample.
    cascade_after: list[str] = field(default_factory=list)
    #: A few of the adversarial examples it counted as successful, kept in the store for reports.
    examples: list[Example] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.status = Status(self.status)  # a stored or hand-written ``"ok"`` becomes ``Status.OK``

    @property
    def attacked_mask(self) -> np.ndarray | None:
        """The samples the attack ran on (the initially-correct ones for results stored before cascades)."""
        return self.attacked if self.attacked is not None else self.clean_correct

    def _present(self, values: np.ndarray | None) -> np.ndarray:
        """``values``, one of this matchup's per-sample arrays; raises when it has none (it did not finish)."""
        if values is None:
            raise ValueError(f"{self.attack} vs {self.model}+{self.defense} ({self.status}) has no per-sample results")
        return values

    @property
    def clean(self) -> np.ndarray:
        """``clean_correct`` of a matchup that has per-sample results."""
        return self._present(self.clean_correct)

    @property
    def robust(self) -> np.ndarray:
        """``robust_correct`` of a matchup that has per-sample results (a finished one)."""
        return self._present(self.robust_correct)

    @property
    def ran_on(self) -> np.ndarray:
        """``attacked_mask`` of a matchup that has per-sample results."""
        return self._present(self.attacked_mask)

    @property
    def white_box(self) -> bool:
        """Crafted with the target's own gradients: neither a transfer, a gradient-free nor an external attack."""
        return not any(self.gradient.get(k) for k in ("source", "gradient_free", "external"))

    @property
    def passes_per_sample(self) -> float | None:
        """Forward plus backward passes per evaluated sample: the attack's cost, independent of the machine."""
        if self.forward_passes is None or not self.samples:
            return None
        return (self.forward_passes + (self.backward_passes or 0)) / self.samples

    def summary(self) -> dict[str, Any]:
        """Everything but the per-sample arrays, for JSON."""
        arrays = ("clean_correct", "robust_correct", "attacked", "examples")
        fields = {k: v for k, v in self.__dict__.items() if k not in arrays}
        return {**fields, "passes_per_sample": self.passes_per_sample}




@dataclass(frozen=True)
class Verification:
    """An ``arena verify`` of one standing-board entry: the samples replayed from its runs' provenance, the
    matchups (keys) replayed, and the samples whose results differed (none: verified)."""

    id: str
    entry: str
    identity: str
    sample_set: str
    dataset: str
    norm: str
    eps: float
    status: str
    samples: list[int]
    keys: list[str]
    differing: list[str]
    seed: int
    machine: str
    device: str
    arena_version: str
    verified_at: str

    @property
    def mark(self) -> str:
        """How the board shows it: ``verified (K/K, machine, date)`` or ``not reproducible (samples …)``."""
        date = self.verified_at[:10]
        if self.status == "verified":
            return f"verified ({len(self.samples)}/{len(self.samples)}, {self.machine}, {date})"
        return f"not reproducible ({len(self.differing)} difference(s) on {self.machine}, {date}: " \
               f"{'; '.join(self.differing[:3])}{' …' if len(self.differing) > 3 else ''})"
