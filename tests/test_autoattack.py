"""AutoAttack's attacks and suite, cascade evaluation, pass counting and the evaluation's checks on itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchattacks
from conftest import matchup, play, tiny, write_scenario
from pyautoattack import AutoAttack
from torch import nn

from arena import ThreatModel
from arena.checks import PROBE_SAMPLES, convergence, flags, probe
from arena.cost import Counted
from arena.defended import Defended
from arena.flags import sweep_flags
from arena.leaderboard import rows
from arena.scenario import ScenarioError, load_scenario
from arena_plugins.autoattack import APGDCE, APGDDLR, APGDT, FABT, Square
from arena_plugins.fgsm import FGSM

LINF, L2 = ThreatModel("linf", 8 / 255), ThreatModel("l2", 0.5)
ALL = (1, 1, 1, 1, 1, 1, 0, 0)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()


@pytest.mark.parametrize(("threat", "norm"), [(LINF, "Linf"), (L2, "L2")])
def test_defaults_are_the_original_standard_version(threat, norm):
    """Each plugin's defaults equal the attack objects the original AutoAttack builds for ``version='standard'``."""
    net = tiny_net()
    original = AutoAttack(net, norm=norm, eps=threat.eps, version="standard")
    assert original.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    fields = {
        APGDCE: (original.apgd, ["n_iter", "n_restarts", "thr_decr", "eot_iter", "eps", "norm", "loss"]),
        APGDT: (original.apgd_targeted, ["n_iter", "n_restarts", "n_target_classes", "thr_decr", "eot_iter", "eps",
                                         "norm", "loss"]),
        FABT: (original.fab, ["n_iter", "n_restarts", "n_target_classes", "alpha_max", "eta", "beta", "eps", "norm"]),
        Square: (original.square, ["n_queries", "p_init", "n_restarts", "rescale_schedule", "eps", "norm", "loss"]),
    }
    for cls, (theirs, names) in fields.items():
        ours = cls(net, threat).attack
        assert {n: getattr(ours, n) for n in names} == {n: getattr(theirs, n) for n in names}, cls.name
    assert FABT(net, threat).attack.targeted, "AutoAttack runs FAB-T: the targeted version"
    assert original.apgd.n_iter == 100 and original.square.n_queries == 5000 and original.square.p_init == 0.8


def test_parameters_reach_the_library():
    net = tiny_net()
    apgd = APGDCE(net, LINF, n_iter=7, n_restarts=2, rho=0.5, eot_iter=3).attack
    assert (apgd.n_iter, apgd.n_restarts, apgd.thr_decr, apgd.eot_iter, apgd.loss) == (7, 2, 0.5, 3, "ce")
    assert APGDDLR(net, LINF).attack.loss == "dlr"
    targeted = APGDT(net, L2, n_iter=9, n_target_classes=3).attack
    assert (targeted.n_iter, targeted.n_target_classes, targeted.norm, targeted.eps) == (9, 3, "L2", 0.5)
    fab = FABT(net, LINF, n_iter=11, n_target_classes=4, alpha_max=0.2, eta=1.1, beta=0.8).attack
    assert (fab.n_iter, fab.n_target_classes, fab.alpha_max, fab.eta, fab.beta) == (11, 4, 0.2, 1.1, 0.8)
    square = Square(net, LINF, n_queries=123, p_init=0.3, resc_schedule=True).attack
    assert (square.n_queries, square.p_init, square.rescale_schedule) == (123, 0.3, True)
    torch.manual_seed(5)
    first = APGDCE(net, LINF).attack.seed
    torch.manual_seed(5)
    assert APGDCE(net, LINF).attack.seed == first, "the seed comes from the matchup's seeded generator"


SMALL = [{"name": "apgd_ce", "n_iter": 5}, {"name": "apgd_t", "n_iter": 5, "n_target_classes": 2},
         {"name": "fab_t", "n_iter": 5, "n_target_classes": 2}, {"name": "square", "n_queries": 100},
         {"name": "apgd_dlr", "n_iter": 5}]


@pytest.mark.parametrize("threat", [{"norm": "linf", "eps": "8/255"}, {"norm": "l2", "eps": 0.5}])
def test_each_attack_on_real_images_lowers_accuracy_inside_eps(tmp_path, registry, threat):
    store, run_id = play(tmp_path, registry, tiny(attacks=SMALL, threat_model=threat,
                                                  dataset={"samples": 100, "train_samples": 2000}, batch_size=50))
    bound = 8 / 255 if threat["norm"] == "linf" else 0.5
    for m in store.matchups(run_id):
        assert m.status == "ok", m.detail
        assert m.robust_accuracy < m.clean_accuracy, m.attack
        assert m.max_norm <= bound + 1e-6, m.attack
        assert m.forward_passes > 0 and (m.backward_passes > 0) != (m.attack == "square"), m.attack
    square = next(m for m in store.matchups(run_id) if m.attack == "square")
    assert square.gradient.get("gradient_free")


def test_the_suite_expands_into_a_cascade_with_its_own_column(tmp_path, registry):
    scenario = tiny(attacks=["fgsm", "autoattack"], dataset={"samples": 60, "train_samples": 2000}, batch_size=30)
    store, run_id = play(tmp_path, registry, scenario)
    matchups = store.matchups(run_id)
    assert [m.attack for m in matchups] == ["fgsm", "autoattack/apgd_ce", "autoattack/apgd_t", "autoattack/fab_t",
                                            "autoattack/square"]
    members = matchups[1:]
    assert all(m.suite == "autoattack" for m in members) and matchups[0].suite == ""
    assert [m.cascade_after for m in members] == [[], ["autoattack/apgd_ce"],
                                                  ["autoattack/apgd_ce", "autoattack/apgd_t"],
                                                  ["autoattack/apgd_ce", "autoattack/apgd_t", "autoattack/fab_t"]]
    assert members[0].params["attack"]["n_iter"] == 100, "the standard version's 100 iterations"
    for earlier, later in zip(members, members[1:]):
        survivors = earlier.attacked_mask & earlier.robust_correct
        assert (later.attacked_mask == survivors).all(), "a cascaded attack runs only on the survivors"
    [row] = rows(matchups)
    suite = np.logical_and.reduce([m.robust_correct for m in members]).mean()
    assert row.attacks["autoattack"] == pytest.approx(suite) and row.evaluation == "full; cascade: autoattack"
    assert row.passes == pytest.approx(sum(m.passes_per_sample for m in matchups))


def test_suite_versions_and_bad_suite_entries(tmp_path, registry):
    scenario = load_scenario(write_scenario(tmp_path, tiny(attacks=[{"name": "autoattack", "version": "rand",
                                                                       "label": "aa"}])), registry)
    assert [(a.key, a.name, a.eot_samples, a.suite) for a in scenario.attacks] == [
        ("aa/apgd_ce", "apgd_ce", 20, "aa"), ("aa/apgd_dlr", "apgd_dlr", 20, "aa")]
    bad_version = r"attacks\[0\]\.version: Input should be 'standard' or 'rand' \(got 'plus'\)"
    with pytest.raises(ScenarioError, match=bad_version):
        load_scenario(write_scenario(tmp_path, tiny(attacks=[{"name": "autoattack", "version": "plus"}])), registry)
    with pytest.raises(ScenarioError, match="'autoattack/apgd_ce' appears twice"):
        load_scenario(write_scenario(tmp_path, tiny(attacks=["autoattack", "autoattack"])), registry)


def test_cascade_worst_case_equals_full_and_reuses_results(tmp_path, registry):
    """Deterministic attacks: the per-sample worst case is the same whether later attacks see every sample or only
    the survivors; a cascade re-run reuses every matchup."""
    attacks = ["fgsm", {"name": "pgd", "steps": 5, "random_start": False}]
    worst = {}
    for mode in ("full", "cascade"):
        (tmp_path / mode).mkdir()
        store, run_id = play(tmp_path / mode, registry, tiny(attacks=attacks, evaluation=mode), tmp_path / "cache")
        [row] = rows(store.matchups(run_id))
        worst[mode] = np.logical_and.reduce([m.robust_correct for m in store.matchups(run_id)])
        fgsm, pgd = store.matchups(run_id)
        assert (pgd.attacked_mask.sum() < fgsm.attacked_mask.sum()) == (mode == "cascade")
        assert row.evaluation == mode
    assert (worst["full"] == worst["cascade"]).all()
    store, again = play(tmp_path / "cascade", registry, tiny(attacks=attacks, evaluation="cascade"), tmp_path / "cache")
    assert all(m.reused_from for m in store.matchups(again))


def test_pass_counts_are_exact_on_a_tiny_model():
    net, images, labels = tiny_net(), torch.rand(6, 3, 32, 32), torch.arange(6)
    counted = Counted(Defended(net))
    FGSM(counted, LINF)(images, labels)
    assert (counted.passes.forward, counted.passes.backward) == (6, 6)
    counted = Counted(Defended(net))
    torchattacks.PGD(counted, eps=LINF.eps, alpha=0.01, steps=4)(images, labels)
    assert (counted.passes.forward, counted.passes.backward) == (24, 24)

    class Noise(nn.Module):
        name, randomized, differentiable = "noise", True, True

        def forward(self, x):
            return (x + 0.01 * torch.randn_like(x)).clamp(0, 1)

    counted = Counted(Defended(net, pre=[Noise()], eot_samples=5))
    FGSM(counted, LINF)(images, labels)
    assert (counted.passes.forward, counted.passes.backward) == (30, 30), "EOT draws are network passes"
    with torch.no_grad():
        counted(images)
    assert counted.passes.forward == 36, "a prediction is one draw"


def test_passes_counted_apart_stay_out_of_the_count():
    """An auxiliary computation (the unconstrained attack, the binarization test) counts its passes apart, even
    while the matchup's counting is off, and leaves the matchup's count and counting as they were."""
    net, images, labels = tiny_net(), torch.rand(6, 3, 32, 32), torch.arange(6)
    counted = Counted(Defended(net))
    FGSM(counted, LINF)(images, labels)
    counted.counting = False
    with counted.apart() as passes:
        torchattacks.PGD(counted, eps=LINF.eps, alpha=0.01, steps=4)(images, labels)
    assert (passes.forward, passes.backward) == (24, 24)
    assert (counted.passes.forward, counted.passes.backward) == (6, 6) and counted.counting is False
    with pytest.raises(RuntimeError), counted.apart():
        FGSM(counted, LINF)(images, labels)
        raise RuntimeError("an attack that fails halfway")
    assert (counted.passes.forward, counted.passes.backward) == (6, 6) and counted.counting is False


class _Softmax(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).softmax(1)


class _Random(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x + 0.05 * torch.randn_like(x))


class _Quantized(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net((x * 4).round() / 4)  # round has a zero gradient everywhere


def test_probe_fires_on_each_broken_model_and_stays_quiet_on_a_sound_one():
    net, images, labels = tiny_net(), torch.rand(8, 3, 32, 32), torch.arange(8) % 10
    sound = probe(net, net, images, labels)
    assert sound == {"probabilities": False, "nondeterministic": False, "zero_gradient": 0, "checked": 8}
    assert probe(net, _Softmax(net), images, labels)["probabilities"]
    assert probe(_Random(net), net, images, labels)["nondeterministic"]
    assert probe(net, _Quantized(net), images, labels)["zero_gradient"] == 8


def _trace(late_rise: float) -> torch.Tensor:
    """Margins of 4 never-broken samples over 20 steps: a rise of 1 over the first 18 steps, then ``late_rise``."""
    steps = torch.cat([torch.linspace(-2, -1, 18), torch.tensor([-1.0, -1.0 + late_rise])])
    return steps.view(-1, 1).repeat(1, 4)


@pytest.mark.parametrize(
    ("fired", "expected"),
    [
        (dict(checks={"probabilities": True}), "the model returns probabilities"),
        (dict(checks={"nondeterministic": True}), "5 forward passes disagree"),
        (dict(checks={"zero_gradient": 3, "checked": 6}), "pgd: 3 of 6 attacked samples have a zero input gradient"),
        (dict(checks={"convergence": convergence([_trace(0.5)])}), "pgd had not converged"),
        (dict(checks={"accuracy_all": 0.9}), "label leaking: pgd's images are classified correctly on 90.0%"),
    ],
)
def test_each_stored_check_fires_and_stays_quiet(fired, expected):
    found = flags([matchup("pgd", (1, 1, 0, 0, 0, 0, 0, 0), **fired)])
    assert len(found) == 1 and found[0].startswith(expected), found
    quiet = {"probabilities": False, "nondeterministic": False, "zero_gradient": 0, "checked": 6,
             "convergence": convergence([_trace(0.0)]), "accuracy_all": 0.5}
    assert flags([matchup("pgd", (1, 1, 0, 0, 0, 0, 0, 0), checks=quiet)]) == []
    eot = matchup("pgd", (1, 1, 0, 0, 0, 0, 0, 0), checks={"nondeterministic": True}, eot_samples=10)
    assert flags([eot]) == [], "randomness attacked with EOT is sound"


def test_convergence_needs_enough_steps():
    assert convergence([_trace(0.5)[:5]]) is None
    measured = convergence([_trace(0.5), _trace(0.0)])
    assert measured["robust"] == 8 and measured["late_rise"] == pytest.approx(4 * 0.5)


def test_iterative_weaker_than_single_step_on_the_same_samples():
    fgsm = matchup("fgsm", (1, 0, 0, 0, 0, 0, 0, 0), passes=(6, 6))
    weak_pgd = matchup("pgd", (1, 1, 1, 0, 0, 0, 0, 0), passes=(60, 60))
    assert any(f.startswith("iterative pgd leaves 2 more samples robust than single-step fgsm") for f in
               flags([fgsm, weak_pgd]))
    assert flags([fgsm, matchup("pgd", (0,) * 8, passes=(60, 60))]) == []
    # In a cascade the later single-step attack ran only on the iterative one's survivors: it broke one of them.
    strong_pgd = matchup("pgd", (1, 1, 0, 0, 0, 0, 0, 0), passes=(60, 60))
    after = matchup("fgsm", (1, 0, 0, 0, 0, 0, 0, 0), passes=(2, 2), attacked=(1, 1, 0, 0, 0, 0, 0, 0), after=("pgd",))
    assert any("iterative pgd leaves 1 more samples robust" in f for f in flags([strong_pgd, after]))


def test_black_box_breaking_past_white_box_in_a_cascade():
    apgd = matchup("apgd_ce", (1, 1, 1, 0, 0, 0, 0, 0))
    square = matchup("square", (1, 0, 0, 0, 0, 0, 0, 0), attacked=(1, 1, 1, 0, 0, 0, 0, 0), after=("apgd_ce",),
                     gradient_free=True)
    [row] = rows([apgd, square])
    assert row.flags == ["square (gradient-free) broke 2 samples that every white-box attack missed; gradients may "
                         "be masked: attack adaptively (BPDA, EOT) or with more iterations"]
    quiet = matchup("square", (1, 1, 1, 0, 0, 0, 0, 0), attacked=(1, 1, 1, 0, 0, 0, 0, 0), after=("apgd_ce",),
                    gradient_free=True)
    assert rows([apgd, quiet])[0].flags == []


def test_sweep_checks_at_large_and_vanishing_eps():
    clean = {("cnn", "a"): 0.8, ("cnn", "b"): 0.8}
    curves = {("cnn", "a"): [(1e-5, 0.6), (0.1, 0.3), (0.5, 0.4)], ("cnn", "b"): [(1e-5, 0.8), (0.1, 0.3), (0.5, 0.0)]}
    flagged = sweep_flags(curves, clean, "linf")
    assert list(flagged) == [("cnn", "a")]
    assert any("40.0% robust at ε=0.5, where every image can be turned grey" in f for f in flagged["cnn", "a"])
    assert any("60.0% robust at ε=1e-05 against 80.0% clean" in f for f in flagged["cnn", "a"])


def test_a_real_run_stores_checks_and_measures_label_leaking_for_single_step_attacks(tmp_path, registry):
    store, run_id = play(tmp_path, registry, tiny())
    fgsm, pgd = store.matchups(run_id)
    for m in (fgsm, pgd):
        assert m.checks["checked"] == min(PROBE_SAMPLES, int(m.clean_correct.sum())) and m.checks["zero_gradient"] == 0
        assert not m.checks["probabilities"] and not m.checks["nondeterministic"]
    attacked = int(fgsm.clean_correct.sum())
    assert (fgsm.forward_passes, fgsm.backward_passes) == (attacked, attacked), "checks are not counted as cost"
    assert pgd.backward_passes == 3 * attacked and "accuracy_all" not in pgd.checks
    assert fgsm.robust_accuracy <= fgsm.checks["accuracy_all"] <= 1
    assert "convergence" not in pgd.checks, "three steps are too few to judge convergence"
