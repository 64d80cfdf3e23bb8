"""Indicators of attack failure (Pintor et al. 2022) on a real CIFAR-10 slice: each fires on a hand-made failing
evaluation, stays quiet on a sound one, and the three undeclared maskings (rounding left differentiable, logits
scaled at inference, noise not declared randomized) end in a flag naming the cause and the fix."""

from __future__ import annotations

import pytest
import torch
from conftest import matchup, play, run_cli, tiny, write_scenario
from torch import nn

from arena.active import INNER_POINTS, PASS_SHARE, ActiveTestError, binarization, fit_head, last_linear
from arena.checks import flags
from arena.data import Data
from arena.indicators import UNSTABLE_SHARE, silent_success, whole_box
from arena.leaderboard import rows
from arena.matchups import Arena
from arena.registry import load_registry
from arena.scenario import load_scenario
from arena.store import Store
from arena.threat import ThreatModel
from arena.training import WeightsCache


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder whose weights cache the module's runs share (the same CNN, trained once)."""
    return tmp_path_factory.mktemp("indicators")


@pytest.fixture(scope="module")
def played(folder):
    """The CNN without defense attacked by a sound PGD, a PGD with a vanishing step, an attack that forgets its
    iterates and FGSM; and by the sound PGD through undeclared rounding and undeclared noise."""
    plain = [{"name": "pgd", "steps": 10}, {"name": "pgd", "steps": 10, "step_size": 1e-5, "label": "pgd_tiny"},
             {"name": "forgetful"}, "fgsm"]
    return _played(folder, [(CNN, ["none"], plain), (CNN, MASKINGS, [{"name": "pgd", "steps": 10}])])


@pytest.fixture(scope="module")
def strong(folder):
    """The CNN against no defense and the two undeclared maskings, and the ×1000-logits CNN undefended, attacked by
    the recommended strong attacks: APGD-CE, APGD-DLR and Square (the `fast` suite's core)."""
    attacks = [{"name": "apgd_ce", "n_iter": 10}, {"name": "apgd_dlr", "n_iter": 10},
               {"name": "square", "n_queries": 100}]
    return _played(folder, [(CNN, ["none", *MASKINGS], attacks), ({"name": "hot_cnn", "train": {"epochs": 1}},
                                                                  ["none"], attacks)])


#: The CNN every run here trains once (the module's weights cache), and the undeclared rounding and noise.
CNN = {"name": "cnn", "train": {"epochs": 1}}
MASKINGS = [{"name": "hidden_mask", "label": "round"}, {"name": "hidden_noise", "sigma": 0.3, "label": "noise"}]


def _played(folder, grids: list[tuple[dict, list, list]]) -> tuple[dict, dict]:
    """Runs, one per (model, defenses, attacks), on the first 40 test images, so that no matchup the tests do not
    read is played; their matchups by (model, defense, attack) and leaderboard rows by (model, defense)."""
    registry = load_registry(modules=["arena_test_plugins"])
    matchups, table = {}, {}
    for model, defenses, attacks in grids:
        store, run_id = play(folder, registry, tiny(models=[model], defenses=defenses, attacks=attacks,
                                                    dataset={"samples": 40, "train_samples": 2000}, batch_size=40))
        found = store.matchups(run_id)
        matchups.update({(m.model, m.defense, m.attack): m for m in found})
        table.update({(r.model, r.defense): r for r in rows(found, store.run(run_id))})
    return matchups, table


def test_a_sound_evaluation_raises_no_indicator(played):
    matchups, _ = played
    pgd = matchups["cnn", "none", "pgd"]
    assert not any("binarization" in m.checks for m in matchups.values()), "the active test runs only when asked"
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


def test_a_single_step_attack_is_not_judged_by_the_unconstrained_attack(played):
    """One FGSM sign step across the whole box is a jump to a corner, not an optimisation given unlimited budget:
    the indicator does not run for it (it broke 8 of 10 on this sound CNN and was flagged)."""
    matchups, _ = played
    fgsm = matchups["cnn", "none", "fgsm"]
    assert "unconstrained" not in fgsm.checks and "unstable" in fgsm.checks, fgsm.checks
    assert not any("unconstrained" in f for f in flags([fgsm]))


def test_an_attack_returning_a_worse_point_than_an_iterate_is_a_silent_success(played):
    matchups, _ = played
    forgetful = matchups["cnn", "none", "forgetful"]
    assert forgetful.checks["silent_success"] > 0
    assert any(f.startswith("forgetful: silent success (Pintor et al.)") and "`apgd_ce`" in f
               for f in flags([forgetful]))


def test_undeclared_rounding_is_flagged_with_its_cause_and_fix(played):
    matchups, table = played
    row = table["cnn", "round"]
    zero = [f for f in row.flags if f.startswith("pgd: ") and "unavailable gradients" in f]
    assert zero and "`differentiable = False`" in zero[0] and "`square`" in zero[0], row.flags
    assert any(f.startswith("pgd: unconstrained attack failure") for f in row.flags)
    assert matchups["cnn", "round", "pgd"].checks["saturated"] == 0, "rounding is not saturation"


def test_logits_scaled_at_inference_are_flagged_as_a_saturated_softmax(strong):
    matchups, table = strong
    assert matchups["hot_cnn", "none", "apgd_ce"].checks["saturated"] > 0
    flagged = [f for f in table["hot_cnn", "none"].flags if "softmax saturates" in f]
    assert flagged and "`apgd_dlr`" in flagged[0], table["hot_cnn", "none"].flags
    assert not any("softmax saturates" in f for f in table["cnn", "none"].flags + table["cnn", "round"].flags)


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


@pytest.fixture(scope="module")
def binarized(folder):
    """The binarization test of four attacks on the CNN's first 16 test images: APGD-CE, PGD-50 and a PGD with a
    vanishing step without defense, APGD-CE through the undeclared rounding."""
    registry = load_registry(modules=["arena_test_plugins"])
    scenario = load_scenario(write_scenario(folder, tiny(
        defenses=["none", {"name": "hidden_mask", "label": "round"}],
        attacks=[{"name": "apgd_ce", "n_iter": 20}, {"name": "pgd", "steps": 50, "label": "pgd_50"},
                 {"name": "pgd", "steps": 10, "step_size": 1e-5, "label": "pgd_tiny"}],
        dataset={"samples": 40, "train_samples": 2000}), "binarize.yaml"), registry)
    arena = Arena(scenario, registry, folder / "results", cache=WeightsCache(folder / "cache"), progress=False,
                  threat=scenario.threat)
    data = Data.load(scenario, registry)
    model, (plain, rounding), (apgd, pgd, pgd_tiny) = scenario.models[0], scenario.defenses, scenario.attacks
    found = {}
    for defense, attack in ((plain, apgd), (plain, pgd), (plain, pgd_tiny), (rounding, apgd)):
        built, counted, _ = arena.attacker(data, model, defense, attack)
        found[defense.key, attack.key] = binarization(built, counted.eval(), counted.module.net, data.images[:16],
                                                      data.labels[:16], arena.threat)
    return found


def test_sound_attacks_on_the_plain_cnn_pass_the_binarization_test(binarized):
    # all passed in every measurement here (11 of 11, 18 of 18 on 40 images); the flag's bar leaves two failures
    for attack in ("apgd_ce", "pgd_50"):
        sound = binarized["none", attack]
        assert sound.tested >= 8 and sound.setup_failed <= 2, sound
        assert sound.pass_rate >= PASS_SHARE, sound
        assert sound.passes > 0


def test_a_vanishing_step_and_an_undeclared_rounding_fail_the_binarization_test(binarized):
    for key in (("none", "pgd_tiny"), ("round", "apgd_ce")):
        failing = binarized[key]
        assert failing.setup_failed < failing.tested, key
        assert failing.pass_rate <= 0.2, (key, failing)
    flagged = flags([matchup("pgd", (1, 1, 0, 0, 0, 0, 0, 0), checks={"binarization": {
        "tested": 10, "passed": 0, "setup_failed": 2, "passes": 200}})])
    assert flagged == [next(f for f in flagged if f.startswith("pgd: binarization test failed (Zimmermann et al.): "
                                                              "it found the planted adversarial on 0 of 8 samples"))]
    assert flags([matchup("pgd", (1, 1, 0, 0, 0, 0, 0, 0), checks={"binarization": {
        "tested": 10, "passed": 8, "setup_failed": 1, "passes": 200}})]) == []


def test_the_binary_head_is_calibrated_to_a_unit_logit_range_just_below_the_planted_point():
    """A separable logistic fit's weights grow without bound: uncalibrated, the clean image's logit sat at -100 to
    -200,000 and the attack's cross-entropy gradient underflowed to exactly zero (APGD-CE passed 8 of 11)."""
    generator = torch.Generator().manual_seed(0)
    inner = torch.randn(INNER_POINTS, 2048, generator=generator).relu()
    planted = inner[:1] + 0.3 * torch.randn(1, 2048, generator=generator)
    weight, bias = fit_head(inner, planted)
    scores = torch.cat([inner, planted]).double() @ weight + bias
    assert 0 < float(scores[-1]) < 1e-3, "the planted point is of class 1, just past the boundary"
    assert float(scores[:-1].max()) < 0 and float(scores.max() - scores.min()) == pytest.approx(1)
    assert fit_head(inner, inner[:1]) is None, "a planted point among the inner ones cannot be separated: setup failed"


def test_the_binarization_test_refuses_a_model_without_a_final_linear_layer():
    no_head = nn.Sequential(nn.Conv2d(3, 10, 32), nn.Flatten())
    with pytest.raises(ActiveTestError, match="needs the model's logits to come from a final nn.Linear"):
        last_linear(no_head, torch.zeros(1, 3, 32, 32))


def test_active_tests_run_when_the_cli_asks_and_the_leaderboard_says_so(folder, capsys):
    scenario = write_scenario(folder, tiny(attacks=[{"name": "apgd_ce", "n_iter": 10}, "noise"], active_samples=4,
                                           dataset={"samples": 40, "train_samples": 2000}), "active.yaml")
    args = ("run", str(scenario), "--results", str(folder / "cli"), "--cache-dir", str(folder / "cache"), "-q",
            "--no-report")
    code, out, _ = run_cli(capsys, *args, "--active-tests")
    assert code == 0, out
    store = Store(folder / "cli")
    run_id = store.run().id
    apgd, noise = store.matchups(run_id)
    assert apgd.checks["binarization"]["tested"] >= 1 and "binarization" not in noise.checks, "gradient attacks only"
    [row] = rows(store.matchups(run_id), store.run(run_id))
    assert "; binarization: apgd_ce " in row.evaluation
    store.close()
    assert run_cli(capsys, *args)[0] == 0
    store = Store(folder / "cli")
    later = store.run().id
    assert later != run_id and not any("binarization" in m.checks for m in store.matchups(later)), \
        "without the option the test does not run (and the earlier matchup is not reused)"
    store.close()


def test_silent_success_is_no_finding_when_the_judge_itself_is_random():
    forgot = {"silent_success": 3}
    assert flags([matchup("pgd", (1, 1, 0, 0, 0, 0, 0, 0), checks=forgot)])[0].startswith("pgd: silent success")
    assert flags([matchup("pgd", (1, 1, 0, 0, 0, 0, 0, 0), checks=forgot, randomized=["noise"], eot_samples=10)]) == []


def test_with_the_recommended_strong_attacks_each_masking_ends_near_the_undefended_worst_case(strong):
    """The margin loss climbs the saturated softmax, Square needs no gradient through the rounding, and the masked
    rows' worst cases fall to the undefended one's."""
    _, table = strong
    undefended = table["cnn", "none"].worst_case
    for key in (("cnn", "round"), ("hot_cnn", "none"), ("cnn", "noise")):
        assert table[key].worst_case <= undefended + 0.1, (key, table[key].attacks)
    for key in (("cnn", "round"), ("hot_cnn", "none")):
        assert table[key].attacks["apgd_ce"] >= table[key].worst_case + 0.15, "the masking does mask APGD-CE"
