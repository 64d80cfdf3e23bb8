"""Images in any memory layout: every attack gets contiguous batches, and a notebook's channels-last tensor
(``torch.from_numpy(x).permute(0, 3, 1, 2)``) gives the same numbers as its contiguous copy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import arena
from arena.registry import load_registry
from arena.version import DISTRIBUTION
from arena_plugins.models import CNN

THREATS = {"linf": arena.ThreatModel("linf", 8 / 255), "l2": arena.ThreatModel("l2", 8 / 255)}
#: Few iterations, queries and targets, so that every built-in attack runs in seconds.
SMALL = {"steps": 2, "n_iter": 2, "n_queries": 20, "n_target_classes": 2, "tries": 1}


def _builtin_attacks() -> list[dict]:
    """Every built-in attack (suites are their members, listed on their own), with small settings."""
    registry = load_registry()
    infos = [registry.get("attack", name) for name in registry.names("attack")]
    return [{"name": i.name, **{k: v for k, v in SMALL.items() if k in i.cls.params}}
            for i in infos if i.package == DISTRIBUTION and not issubclass(i.cls, arena.Suite)]


@pytest.fixture(scope="module")
def batch():
    """An untrained CNN and 24 images in channels-last layout, labelled with its own predictions so that every
    image is attacked."""
    torch.manual_seed(0)
    model = CNN().build(10).eval()
    nhwc = torch.rand(24, 32, 32, 3)
    images = nhwc.permute(0, 3, 1, 2)
    with torch.no_grad():
        labels = model(images).argmax(1)
    return model, images, labels


@pytest.mark.parametrize("norm", sorted(THREATS))
def test_every_builtin_attack_on_a_channels_last_batch_matches_its_contiguous_copy(batch, norm):
    model, images, labels = batch
    assert not images.is_contiguous() and images.is_contiguous(memory_format=torch.channels_last)
    attacks = _builtin_attacks()
    assert {"fgsm", "pgd", "apgd_ce", "apgd_t", "square"} <= {a["name"] for a in attacks}
    strided = arena.evaluate(model, images, labels, attacks=attacks, threat=THREATS[norm], batch_size=16)
    assert [m.attack for m in strided.matchups if m.status != "ok"] == [], [m.detail for m in strided.matchups]
    plain = arena.evaluate(model, images.contiguous(), labels, attacks=attacks, threat=THREATS[norm], batch_size=16)
    assert strided.robust_accuracy == plain.robust_accuracy and strided.worst_case == plain.worst_case
    for name, correct in strided.robust_correct.items():
        assert np.array_equal(correct, plain.robust_correct[name]), name


def test_the_engine_hands_attacks_contiguous_tensors_whatever_the_dataset_gives():
    from arena.data import Data

    images = torch.rand(4, 32, 32, 3).permute(0, 3, 1, 2)
    data = Data(dataset=None, scenario=None, images=images, labels=torch.arange(4))
    moved, labels = data.on(torch.device("cpu"))
    assert moved.is_contiguous() and torch.equal(moved, images) and labels.is_contiguous()


def test_evaluate_raises_naming_the_attacks_when_none_finished(batch, tmp_path):
    model, images, labels = batch
    with pytest.raises(arena.ArenaError, match=r"no attack finished.*cheat \(invalid: .*explode \(error: "
                                               r"RuntimeError: boom from a plugin\).*arena\.db"):
        arena.evaluate(model, images, labels, attacks=[{"name": "cheat", "factor": 3.0}, "explode"],
                       threat=THREATS["linf"], plugins=["arena_test_plugins"], results=tmp_path / "r")
    assert (tmp_path / "r" / "arena.db").is_file(), "the failed matchups are kept"
