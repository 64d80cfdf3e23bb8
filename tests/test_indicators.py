"""Indicators of attack failure (Pintor et al. 2022) on a real CIFAR-10 slice: each fires on a hand-made failing
evaluation, stays quiet on a sound one, and the three undeclared maskings (rounding left differentiable, logits
scaled at inference, noise not declared randomized) end in a flag naming the cause and the fix."""

from __future__ import annotations

import pytest
import torch
from conftest import matchup, play, tiny

from arena.checks import flags
from arena.indicators import UNSTABLE_SHARE, silent_success, whole_box
from arena.leaderboard import rows
from arena.registry import load_registry
from arena.threat import ThreatModel


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    """One run: the CNN and the ×1000-logits CNN against no defense, undeclared rounding and undeclared noise, each
    attacked by a sound PGD, a PGD with a vanishing step and an attack that forgets its iterates."""
    folder = tmp_path_factory.mktemp("indicators")
    scenario = tiny(
        models=[{"name": "cnn", "train": {"epochs": 1}}, {"name": "hot_cnn", "train": {"epochs": 1}}],
        defenses=["none", {"name": "hidden_mask", "label": "round"},
                  {"name": "hidden_noise", "sigma": 0.3, "label": "noise"}],
        attacks=[{"name": "pgd", "steps": 10}, {"name": "pgd", "steps": 10, "step_size": 1e-5, "label": "pgd_tiny"},
                 {"name": "forgetful"}],
        dataset={"samples": 40, "train_samples": 2000}, batch_size=40)
    store, run_id = play(folder, load_registry(modules=["arena_test_plugins"]), scenario)
    found = store.matchups(run_id)
    return {(m.model, m.defense, m.attack): m for m in found}, {(r.model, r.defense): r for r in
                                                                 rows(found, store.run(run_id))}


def test_a_sound_evaluation_raises_no_indicator(played):
    matchups, _ = played
    pgd = matchups["cnn", "none", "pgd"]
    assert pgd.checks["silent_success"] == 0
    assert pgd.checks["unconstrained"]["broken"] == pgd.checks["unconstrained"]["checked"] == 10
    assert pgd.checks["unconstrained"]["passes"] == 10 * 2 * 10, "10 samples × 10 steps × (forward + backward)"
    assert pgd.checks["unstable"] < UNSTABLE_SHARE
    assert flags([pgd]) == []


def test_a_vanishing_step_fails_the_unconstrained_attack(played):
    matchups, _ = played
    tiny_step = matchups["cnn", "none", "pgd_tiny"]
    assert tiny_step.checks["unconstrained"]["broken"] <= 2
    assert any(f.startswith("pgd_tiny: unconstrained attack failure (Pintor et al.)") and "step size" in f
               for f in flags([tiny_step]))


def test_an_attack_returning_a_worse_point_than_an_iterate_is_a_silent_success(played):
    matchups, _ = played
    forgetful = matchups["cnn", "none", "forgetful"]
    assert forgetful.checks["silent_success"] > 0
    assert any(f.startswith("forgetful: silent success (Pintor et al.)") and "`apgd_ce`" in f
               for f in flags([forgetful]))


def test_undeclared_rounding_is_flagged_with_its_cause_and_fix(played):
    _, table = played
    row = table["cnn", "round"]
    zero = [f for f in row.flags if f.startswith("pgd: ") and "unavailable gradients" in f]
    assert zero and "`differentiable = False`" in zero[0] and "`square`" in zero[0], row.flags
    assert any(f.startswith("pgd: unconstrained attack failure") for f in row.flags)


def test_logits_scaled_at_inference_are_flagged_as_a_saturated_softmax(played):
    matchups, table = played
    assert matchups["hot_cnn", "none", "pgd"].checks["saturated"] > 0
    assert matchups["cnn", "round", "pgd"].checks["saturated"] == 0, "rounding is not saturation"
    flagged = [f for f in table["hot_cnn", "none"].flags if "softmax saturates" in f]
    assert flagged and "`apgd_dlr`" in flagged[0], table["hot_cnn", "none"].flags
    assert not any("softmax saturates" in f for f in table["cnn", "none"].flags)


def test_undeclared_noise_is_flagged_as_unstable_predictions_needing_eot(played):
    matchups, table = played
    assert matchups["cnn", "noise", "pgd"].checks["unstable"] > UNSTABLE_SHARE
    row = table["cnn", "noise"]
    assert any(f.startswith("unstable predictions (Pintor et al.)") and "`eot_samples: 20`" in f for f in row.flags)
    assert any("forward passes disagree" in f and "`randomized = True`" in f for f in row.flags), row.flags
    assert not any("unstable predictions" in f for f in table["cnn", "none"].flags)


def test_silent_success_ignores_samples_an_early_exit_attack_dropped():
    trace = torch.tensor([[-1.0, float("nan"), -1.0], [0.5, float("nan"), -0.5]])
    assert silent_success(trace, torch.tensor([True, True, True])) == 1
    assert silent_success(trace, torch.tensor([False, True, True])) == 0
    assert silent_success(torch.empty(0), torch.tensor([True])) == 0


def test_the_whole_box_covers_every_image():
    images = torch.zeros(2, 3, 32, 32)
    assert whole_box(ThreatModel("linf", 8 / 255), images) == ThreatModel("linf", 1.0)
    l2 = whole_box(ThreatModel("l2", 0.5), images)
    assert l2.measure(torch.ones(1, 3, 32, 32))[0] <= l2.eps + 1e-3


def test_an_attack_refusing_the_whole_box_is_reported_not_lost():
    refused = matchup("pgd", (1, 1, 0, 0, 0, 0, 0, 0), checks={"unconstrained": {"error": "ValueError: eps > 0.5"}})
    assert flags([refused]) == ["pgd: unconstrained attack not run (it refused an ε covering the whole box: "
                                "ValueError: eps > 0.5)"]
