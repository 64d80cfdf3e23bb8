"""What an attack costs, in network passes per sample rather than seconds, and how its objective progressed.

``Counted`` wraps the module an attack differentiates. It counts every forward and backward pass through the
network (EOT draws included), per sample, so attack strength per unit of cost compares across machines
(AttackBench). While the attack runs on a batch it also records, for every gradient-carrying forward pass over the
whole batch, each sample's margin (best other logit minus the true one): the trace the convergence check reads. An
attack that drops samples as it breaks them says which rows of the batch its calls cover (``active``); the samples
it left out get NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Passes:
    """Network passes summed over samples: ``forward`` and ``backward``."""

    forward: int = 0
    backward: int = 0

    def __iadd__(self, other: Passes) -> Passes:
        self.forward += other.forward
        self.backward += other.backward
        return self


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample, the largest other logit minus the true one: positive exactly when the sample is misclassified."""
    true = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    other = logits.scatter(1, labels.view(-1, 1), float("-inf")).amax(1)
    return other - true


class Counted(nn.Module):
    """``module`` with its passes counted; ``watch(labels)`` starts the margin trace of one batch, each call's
    ``measure(logits, labels)`` (``margins`` by default). With ``autocast`` (``torch.bfloat16``) the module runs
    under autocast and returns float32 logits."""

    def __init__(self, module: nn.Module, autocast: torch.dtype | None = None,
                 measure: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = margins) -> None:
        super().__init__()
        self.module = module
        self.autocast = autocast
        self.measure = measure
        self.passes = Passes()
        self._labels: torch.Tensor | None = None
        self._active: torch.Tensor | None = None
        self._trace: list[torch.Tensor] = []

    def draws(self) -> int:
        """Network passes per sample in one forward call: the EOT draws of a randomized defended module."""
        draws = getattr(self.module, "draws", None)
        return draws() if callable(draws) else 1

    @contextmanager
    def apart(self) -> Iterator[Passes]:
        """Count the block's passes on their own, out of ``passes``: what an auxiliary computation costs, kept out
        of the matchup's count. Yields the block's count."""
        saved, self.passes = self.passes, Passes()
        try:
            yield self.passes
        finally:
            self.passes = saved

    def watch(self, labels: torch.Tensor | None) -> None:
        """Trace the margins of a batch with these labels (None stops tracing)."""
        self._labels, self._active, self._trace = labels, None, []

    def active(self, rows: torch.Tensor | None) -> None:
        """The rows of the watched batch that the next calls cover (None: all of it), for an attack that stops
        computing on the samples it has broken; their trace rows hold NaN for the others."""
        self._active = rows

    def trace(self) -> torch.Tensor:
        """``[calls, batch]`` measures (margins) of the watched batch: a row per gradient-carrying forward pass over
        all of it (or over its ``active`` rows, NaN elsewhere)."""
        return torch.stack(self._trace).cpu() if self._trace else torch.empty(0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        passes = images.shape[0] * self.draws()
        if self.autocast is None:
            output = self.module(images)
        else:
            with torch.autocast(images.device.type, dtype=self.autocast):
                output = self.module(images).float()
        self.passes.forward += passes
        if output.requires_grad:
            output.register_hook(lambda grad: self._backward(passes))
            labels, rows = self._labels, self._active
            if labels is not None and images.shape[0] == (labels.shape[0] if rows is None else rows.shape[0]):
                self._trace.append(self._row(output.detach(), labels, rows))  # on its device: no sync
        return output

    def _backward(self, passes: int) -> None:
        self.passes.backward += passes

    def _row(self, logits: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """The watched batch's measures from a call covering ``rows`` of it (None: all), NaN for the rows left out."""
        if rows is None:
            return self.measure(logits, labels)
        row = torch.full(labels.shape, float("nan"), dtype=logits.dtype, device=logits.device)
        return row.index_copy(0, rows, self.measure(logits, labels[rows]))
