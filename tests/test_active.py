"""Active tests and attacks together: every built-in attack and every member of both built-in suites runs under
``active_tests: [binarization]`` on a model where samples survive, its binarization test stored beside its own
results; an attack that fails on the test's 2-class head keeps its results, the failure stored and flagged."""

from __future__ import annotations

import pytest
import torch
from conftest import play, tiny

from arena.checks import flags
from arena.records import Status
from arena.registry import load_registry
from arena_plugins.apgd import dlr_loss, dlr_loss_targeted
from arena_plugins.autoattack import margin_loss

#: Small budgets for the built-in attacks whose defaults are AutoAttack's (hundreds of steps, thousands of queries).
SMALL = {"apgd_ce": {"n_iter": 10}, "apgd_dlr": {"n_iter": 10}, "apgd_t": {"n_iter": 10},
         "fab_t": {"n_iter": 10}, "square": {"n_queries": 50}, "early_apgd_ce": {"n_iter": 10},
         "early_apgd_dlr": {"n_iter": 10}, "early_apgd_t": {"n_iter": 10}, "early_pgd": {"steps": 10},
         "pgd": {"steps": 10}}
#: The CNN briefly trained, 20 test images, an ε at which a share of the samples survives every attack.
SETTING = {"dataset": {"samples": 20, "train_samples": 2000}, "threat_model": {"norm": "linf", "eps": "1/255"},
           "active_tests": ["binarization"], "active_samples": 2, "batch_size": 20}


def _tested(matchups: list) -> None:
    """Every matchup ran; each gradient attack that attacked a sample has a binarization result, no error."""
    for m in matchups:
        assert m.status in (Status.OK, Status.SKIPPED), (m.attack, m.detail)
        if m.status == Status.SKIPPED or not m.attacked_mask.any() or m.gradient.get("gradient_free"):
            continue
        test = m.checks["binarization"]
        assert "error" not in test and test["tested"] >= 1 and test["passes"] > 0, (m.attack, test)


def test_every_built_in_attack_runs_under_the_binarization_test(tmp_path):
    registry = load_registry()
    names = [info.name for info in (registry.get("attack", n) for n in registry.names("attack"))
             if info.cls.__module__.startswith("arena_plugins.")]
    assert {"apgd_t", "early_apgd_t", "fab_t", "apgd_dlr", "early_apgd_dlr"} <= set(names)
    attacks = [{"name": name, **SMALL.get(name, {})} for name in names]
    store, run_id = play(tmp_path, registry, tiny(attacks=attacks, **SETTING))
    matchups = store.matchups(run_id)
    assert len(matchups) == len(names)
    _tested(matchups)
    assert any(m.robust_accuracy for m in matchups), "samples survive"
    assert not any("binarization test not run" in f for f in flags(matchups))


@pytest.mark.parametrize("suite", ["fast", "autoattack"])
def test_every_member_of_a_suite_runs_under_the_binarization_test(tmp_path, registry, suite):
    # BPDA through JPEG makes the fast suite's conditions hold, so its conditional FAB-T and Square run too
    defenses = [{"name": "art.jpeg", "quality": 50}] if suite == "fast" else ["none"]
    store, run_id = play(tmp_path, registry, tiny(attacks=[suite], defenses=defenses, **SETTING))
    matchups = store.matchups(run_id)
    _tested(matchups)
    assert all(m.status == Status.OK for m in matchups), [(m.attack, m.status, m.detail) for m in matchups]
    white = [m for m in matchups if m.status == Status.OK and not m.gradient.get("gradient_free")]
    assert {m.attack.split("/")[-1] for m in white if m.checks.get("binarization")} >= (
        {"apgd_ce", "apgd_t", "fab_t"} if suite == "autoattack" else {"early_apgd_ce", "early_apgd_t", "fab_t"}), \
        "samples survive into every gradient member, which is tested"


def test_an_attack_failing_on_the_two_class_head_keeps_its_own_results(tmp_path):
    registry = load_registry(modules=["arena_test_plugins"])
    store, run_id = play(tmp_path, registry, tiny(attacks=["ten_classes"], **SETTING))
    [m] = store.matchups(run_id)
    assert m.status == Status.OK and m.robust_accuracy is not None and m.forward_passes > 0
    assert m.checks["binarization"]["error"].startswith("ten_classes failed on the test's 2-class head (ValueError: "
                                                        "needs 10 classes, got 2)")
    assert [f for f in flags([m]) if "binarization" in f] == [
        f"ten_classes: binarization test not run: {m.checks['binarization']['error']}"]


def test_dlr_losses_on_too_few_classes_are_the_stated_margin_substitute():
    two = torch.tensor([[0.0, 0.3], [0.2, -0.1]], requires_grad=True)
    labels, targets = torch.tensor([0, 0]), torch.tensor([1, 1])
    assert torch.equal(dlr_loss(two, labels, labels), margin_loss(two, labels))
    assert torch.allclose(margin_loss(two, labels), torch.tensor([0.3, -0.3]))
    assert torch.equal(dlr_loss_targeted(two, labels, targets), margin_loss(two, labels, targets))
    ten = torch.randn(4, 10)
    assert not torch.equal(dlr_loss(ten, labels.repeat(2), labels.repeat(2)), margin_loss(ten, labels.repeat(2))), \
        "ten classes keep DLR"
