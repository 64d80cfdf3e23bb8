"""The engine: one matchup played batch by batch on the samples it attacks, each adversarial batch audited and
judged by the target, its passes counted and the checks of ``arena.checks`` answered; ``arena.matchups`` runs the
tournament around it."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from arena.active import active_checks
from arena.audit import audit
from arena.checks import PROBE_SAMPLES, convergence, probe, single_step
from arena.cost import Counted, Passes
from arena.defended import Defended
from arena.indicators import measure, silent_success
from arena.keys import derive_seed
from arena.kinds import Attack
from arena.model_checks import ModelChecks, fresh
from arena.records import Example, GradientPath, Matchup, Status
from arena.schema import AttackRef, DefenseRef, ModelRef
from arena.threat import ThreatModel
from arena.training import seed_everything

log = logging.getLogger(__name__)


class Data(Protocol):
    """What the engine reads of a run's evaluation data (``arena.data.Data``): the images, and both on a device."""

    images: torch.Tensor

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]: ...


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Predicted labels (on the CPU) of ``model`` in eval mode."""
    model.eval()
    return torch.cat([model(x.to(device)).argmax(1).cpu() for x in images.split(batch_size)])


@dataclass
class Engine:
    """Plays matchups under one threat model: batches of ``batch_size`` on ``device``, up to ``examples`` successful
    examples kept per matchup (None: all), with a progress bar unless ``progress`` is off, and the binarization
    test on ``active_samples`` when asked.

    Every batch is seeded on its own (by ``seed``, the matchup and the batch's first sample), so any batch can be
    replayed alone and give what the full run gave: ``only`` replays just the batches holding those samples (``arena
    verify``), without the checks."""

    threat: ThreatModel
    device: torch.device
    batch_size: int
    examples: int | None
    progress: bool = True
    #: Samples each white-box matchup's binarization test (``arena.active``) runs on; 0: not asked, never run.
    active_samples: int = 0
    #: The model-level checks already measured, shared by the attacks on each model × defense.
    checked: ModelChecks = field(default_factory=ModelChecks)
    #: The scenario seed, from which each batch's seed is derived.
    seed: int = 0
    #: When set, only the batches holding one of these samples are played, and no check is run (a replay).
    only: np.ndarray | None = None

    def play(
        self, attacker: Callable[[], tuple[Attack, Counted, GradientPath]], target: Defended, data: Data,
        clean_correct: np.ndarray, todo: np.ndarray, refs: tuple[ModelRef, DefenseRef, AttackRef],
        before: list[Matchup],
    ) -> Matchup:
        """Attack the samples in ``todo`` batch by batch with what ``attacker`` builds, counting passes and auditing
        every adversarial batch.

        White-box, the attack differentiates the target itself; a transfer attack crafts on its source and the
        examples are then judged by the target. The first batch also answers the checks of ``arena.checks`` (those of
        the defended model measured once, by the first of its attacks, in ``checked``); a
        single-step attack outside a cascade is then run on the initially-misclassified samples too, so that label
        leaking (the attack fixing images) can be measured.
        """
        started = time.perf_counter()
        model_ref, defense_ref, attack_ref = refs
        record = _Recorder(refs, len(data.images), started, clean_correct, todo, [m.attack for m in before])
        desc = f"{attack_ref.key} vs {model_ref.key}+{defense_ref.key}"
        try:
            attack, counted, record.gradient = attacker()
            traces, first, silent, once = [], None, 0, fresh
            for index, images, labels in self.batches(data, todo, desc):
                if self.only is not None and not self.only[index.numpy()].any():
                    continue
                if not record.checks and self.only is None:
                    once = self.checked.scope(model_ref.key, defense_ref.key, record.gradient, index[:PROBE_SAMPLES])
                    with counted.apart():
                        record.checks.update(probe(target, counted.module, images, labels, once))
                    first = images[:PROBE_SAMPLES], labels[:PROBE_SAMPLES]
                counted.watch(labels)
                seed_everything(derive_seed(self.seed, *(ref.key for ref in refs), "batch", int(index[0])))
                violation = self.judge(attack, counted, target, images, labels, index, record.robust, record.norms,
                                       record.examples, record.attack_times)
                traces.append(counted.trace())
                counted.watch(None)
                if violation:
                    return record.finish(Status.INVALID, violation, counted.passes)
                silent += silent_success(traces[-1], torch.from_numpy(record.robust[index.numpy()]))
            if self.only is not None:
                return record.finish(Status.OK, passes=counted.passes)
            record.checks["convergence"] = convergence(traces)
            one_step = single_step(counted.passes.backward, int(todo.sum()), record.gradient)
            if first is not None:
                with counted.apart():
                    record.checks.update(measure(attack, counted, target, *first, self.threat, record.gradient,
                                                 record.checks.get("zero_gradient", 0), not one_step, once))
                if not record.gradient.get("source"):
                    record.checks["silent_success"] = silent
            if self.active_samples and first is not None and record.gradient.get("source") is None \
                    and not record.gradient.get("gradient_free"):
                chosen = torch.from_numpy(np.flatnonzero(todo)[:self.active_samples]).to(self.device)
                images, labels = (t[chosen] for t in data.on(self.device))
                record.checks["binarization"] = active_checks(attack, counted, images, labels, self.threat)
            record.passes = counted.passes
            if not before and one_step:
                fixed = np.zeros(len(todo), dtype=bool)
                with counted.apart():  # a check, not the attack: its passes stay out of the matchup's count
                    for index, images, labels in self.batches(data, ~clean_correct, desc + " (label-leak check)"):
                        violation = self.judge(attack, counted, target, images, labels, index, fixed, norms=[])
                        if violation:
                            return record.finish(Status.INVALID, violation, record.passes)
                record.checks["accuracy_all"] = float((record.robust | fixed).mean())
        except Exception:
            detail = traceback.format_exc()
            log.error("%s failed:\n%s", desc, detail)
            return record.finish(Status.ERROR, detail)
        return record.finish(Status.OK)

    def batches(
        self, data: Data, mask: np.ndarray, desc: str
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``mask``'s samples in batches of ``batch_size``, with a progress bar: their indices (on the CPU) and
        their images and labels, cut from the copy already on the device."""
        images, labels = data.on(self.device)
        indices = torch.from_numpy(np.flatnonzero(mask))
        batches = indices.split(self.batch_size) if len(indices) else ()
        # a bar of one batch says nothing the run's overall bar does not: only longer matchups show theirs
        for index in tqdm(batches, desc=desc, disable=not self.progress or len(batches) <= 1, leave=False,
                          unit="batch"):
            on_device = index.to(self.device)
            yield index, images[on_device], labels[on_device]

    def judge(
        self, attack: Attack, counted: Counted, target: Defended, images: torch.Tensor, labels: torch.Tensor,
        index: torch.Tensor, correct: np.ndarray, norms: list[torch.Tensor], keep: list[Example] | None = None,
        times: list[float] | None = None,
    ) -> str | None:
        """Attack one batch, audit it and mark in ``correct`` which adversarial images the target still classifies
        right; the first successful examples go to ``keep`` (up to ``examples``) and the attack's own seconds to
        ``times``. Returns the audit's violation."""
        counted.eval()
        started = time.perf_counter()
        adversarial = attack(images, labels)
        if times is not None:
            times.append(time.perf_counter() - started)
        report = audit(attack.name, images, adversarial, self.threat)
        norms.append(report.norms.cpu())
        if report.violation:
            return report.violation
        right = predict(target, adversarial, self.batch_size, self.device) == labels.cpu()
        correct[index.numpy()] = right.numpy()
        limit = self.examples
        if keep is not None and (limit is None or len(keep) < limit):
            keep += _examples(target, images, adversarial, labels, index, ~right,
                              None if limit is None else limit - len(keep))
        return None


def _examples(
    target: Defended, images: torch.Tensor, adversarial: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
    broken: torch.Tensor, count: int | None,
) -> list[Example]:
    """The first ``count`` (None: all) broken samples of a batch as stored examples, with the target's
    confidences."""
    chosen = broken.nonzero().flatten()[:count]
    if not len(chosen):
        return []
    with torch.no_grad():
        before, after = target(images[chosen]).softmax(1).cpu(), target(adversarial[chosen]).softmax(1).cpu()
    return [
        Example(sample=int(index[i]), label=int(labels[i]), clean=images[i].cpu().numpy(),
                adversarial=adversarial[i].detach().cpu().numpy(), predicted_before=int(b.argmax()),
                predicted_after=int(a.argmax()), confidence_before=float(b.max()), confidence_after=float(a.max()))
        for i, b, a in zip(chosen.tolist(), before, after)
    ]


@dataclass
class _Recorder:
    """What one matchup accumulates while it runs, turned into its stored ``Matchup`` by ``finish``."""

    refs: tuple[ModelRef, DefenseRef, AttackRef]
    samples: int
    started: float
    clean_correct: np.ndarray
    attacked: np.ndarray
    after: list[str]
    robust: np.ndarray = field(init=False)
    norms: list[torch.Tensor] = field(default_factory=list)
    gradient: GradientPath = field(default_factory=lambda: GradientPath())
    checks: dict[str, Any] = field(default_factory=dict)
    passes: Passes | None = None
    examples: list[Example] = field(default_factory=list)
    #: Seconds spent inside the attack's calls, per batch (the rest of the matchup's time is checks and judging).
    attack_times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.robust = np.zeros(self.samples, dtype=bool)

    def finish(self, status: Status, detail: str | None = None, passes: Passes | None = None) -> Matchup:
        passes = passes or self.passes
        base = record_matchup(self.refs, self.samples, self.started, status, detail, self.clean_correct,
                       self.robust if status == Status.OK else None, self.norms, self.gradient, self.attacked)
        return replace(
            base, checks={k: v for k, v in self.checks.items() if v is not None}, cascade_after=self.after,
            examples=self.examples if status == Status.OK else [],
            forward_passes=passes.forward if passes else None, backward_passes=passes.backward if passes else None,
            attack_time_s=sum(self.attack_times) if self.attack_times else None,
        )


def record_matchup(
    refs: tuple[ModelRef, DefenseRef, AttackRef], samples: int, started: float, status: Status,
    detail: str | None = None,
    clean_correct: np.ndarray | None = None, robust: np.ndarray | None = None, norms: Sequence[torch.Tensor] = (),
    gradient: GradientPath | None = None, attacked_mask: np.ndarray | None = None,
) -> Matchup:
    """The stored result: accuracies over all samples, attack success over the attacked ones (by default the
    initially-correct ones)."""
    model_ref, defense_ref, attack_ref = refs
    measured = torch.cat(list(norms)) if norms else None
    attacked_mask = clean_correct if attacked_mask is None else attacked_mask
    attacked = int(attacked_mask.sum()) if attacked_mask is not None else 0
    return Matchup(
        model=model_ref.key, defense=defense_ref.key, attack=attack_ref.key, suite=attack_ref.suite,
        params={
            "model": {"plugin": model_ref.name, **model_ref.params, "train": model_ref.train.model_dump()},
            "defense": [{"plugin": ref.name, **ref.params} for ref in defense_ref.chain],
            "attack": {"plugin": attack_ref.name, **attack_ref.params,
                       **attack_ref.model_dump(include={"source", "bpda", "eot_samples"}, exclude_none=True)},
        },
        gradient=gradient or GradientPath(),
        status=status, detail=detail, samples=samples, wall_time_s=time.perf_counter() - started,
        clean_accuracy=float(clean_correct.mean()) if clean_correct is not None else None,
        robust_accuracy=float(robust.mean()) if robust is not None else None,
        attack_success_rate=(1 - float(robust[attacked_mask].sum()) / attacked
                             if robust is not None and attacked else None),
        mean_norm=float(measured.double().mean()) if measured is not None and len(measured) else None,
        max_norm=float(measured.max()) if measured is not None and len(measured) else None,
        clean_correct=clean_correct, robust_correct=robust, attacked=attacked_mask,
    )
