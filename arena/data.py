"""A run's data: the scenario's evaluation slice, and its training data, read only when a model must be trained."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from arena.kinds import DataError, Dataset
from arena.registry import Registry
from arena.schema import Scenario
from arena.training import fingerprint
from arena.untrusted import check_split


@dataclass
class Data:
    """The scenario's evaluation slice, and its training data loaded only when a model must be trained."""

    dataset: Dataset
    scenario: Scenario
    images: torch.Tensor
    labels: torch.Tensor
    _train: tuple[torch.Tensor, torch.Tensor, str] | None = None
    #: The training data's content hash when known without reading it (a Ray worker gets the driver's).
    known_fingerprint: str | None = None
    _moved: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, scenario: Scenario, registry: Registry) -> Data:
        """The evaluation slice the scenario names, checked against the split's size."""
        ref = scenario.dataset
        dataset = registry.build(Dataset, ref)
        images, labels = dataset.load(ref.split, scenario.data_dir())
        check_split(images, labels, dataset.num_classes, f"dataset {ref.name!r}, {ref.split} split")
        if ref.samples is not None:
            if ref.samples > len(images):
                raise DataError(
                    f"{scenario.path}: dataset.samples = {ref.samples}, but the {ref.split} split of "
                    f"{ref.name} has {len(images)} images; lower it or leave it unset to use all"
                )
            images, labels = images[: ref.samples], labels[: ref.samples]
        return cls(dataset, scenario, images, labels)

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The evaluation images and labels on ``device``: moved there once per run, not once per batch, and
        contiguous whatever the dataset's layout (the original AutoAttack code ``view``s its inputs)."""
        if device not in self._moved:
            self._moved[device] = (self.images.to(device).contiguous(), self.labels.to(device).contiguous())
        return self._moved[device]

    def fingerprint(self) -> str:
        """The training data's content hash, which every weights key includes."""
        return self.known_fingerprint or self.train()[2]

    def train(self) -> tuple[torch.Tensor, torch.Tensor, str]:
        """Training images, labels and their content fingerprint (loaded once per run)."""
        if self._train is None:
            images, labels = self.dataset.load("train", self.scenario.data_dir())
            check_split(images, labels, self.dataset.num_classes,
                        f"dataset {self.scenario.dataset.name!r}, train split")
            n = self.scenario.dataset.train_samples
            if n is not None and n > len(images):
                raise DataError(f"{self.scenario.path}: dataset.train_samples = {n}, but the train split of "
                                f"{self.scenario.dataset.name} has {len(images)} images; lower it or leave it unset")
            images, labels = images[:n], labels[:n]
            self._train = (images, labels, fingerprint(images, labels))
        return self._train
