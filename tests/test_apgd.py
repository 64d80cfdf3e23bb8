"""The arena's early-exit APGD and PGD against the originals (pyautoattack, torchattacks), per sample: same robust
sets, the same iterates until a sample exits, and exact pass counts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torchattacks
from conftest import play, tiny
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from torch import nn

from arena import ThreatModel
from arena.checks import convergence
from arena.cost import Counted
from arena_plugins.apgd import EarlyAPGDCE, EarlyAPGDDLR, EarlyAPGDT, EarlyPGD
from arena_plugins.cifar10 import CIFAR10
from benchmarks.discarding import dropped, traced, traced_run
from benchmarks.early_exit import options

THREATS = [ThreatModel("linf", 1 / 255), ThreatModel("l2", 0.15)]
NORMS = {"linf": "Linf", "l2": "L2"}
SMALL = {"n_iter": 20, "n_restarts": 2}


class Recorder(nn.Module):
    """``net`` computed in ``dtype``, keeping every input it is differentiated at (the attack's iterates)."""

    def __init__(self, net: nn.Module, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.net, self.dtype, self.calls = net.to(dtype), dtype, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            self.calls.append(x.detach().clone())
        return self.net(x.to(self.dtype))

    def paths(self, clean: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per clean image, the iterates it was differentiated at, in order (each row goes to its nearest image)."""
        paths: list[list[torch.Tensor]] = [[] for _ in clean]
        for batch in self.calls:
            nearest = (batch[:, None] - clean[None]).flatten(2).abs().amax(2).argmin(1)
            for row, sample in zip(batch, nearest.tolist()):
                paths[sample].append(row)
        return paths


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 15 * 15, 10)).eval()


def batch(net: nn.Module, n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images labelled as ``net`` predicts them, but for the first three (misclassified from the start)."""
    torch.manual_seed(1)
    images = torch.rand(n, 3, 32, 32)
    with torch.no_grad():
        labels = net(images).argmax(1)
    labels[:3] = (labels[:3] + 1) % 10
    return images, labels


def original(cls: type, net: nn.Module, threat: ThreatModel, seed: int, **values):
    """The pyautoattack attack that ``cls`` reproduces, with the same parameters and seed."""
    common = {"norm": NORMS[threat.norm], "eps": threat.eps, "seed": seed, "n_iter": values["n_iter"],
              "n_restarts": values["n_restarts"]}
    if cls is EarlyAPGDT:
        return APGDAttack_targeted(net, n_target_classes=values["n_target_classes"], **common)
    return APGDAttack(net, loss=cls.loss, **common)


def robust(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(images).argmax(1) == labels


def both(cls: type, threat: ThreatModel, dtype: torch.dtype = torch.float64, net: nn.Module | None = None,
         data: tuple[torch.Tensor, torch.Tensor] | None = None, **values):
    """Run the original and the early-exit attack on the same batch and seed; their results, passes and paths."""
    values = {**SMALL, **({"n_target_classes": 3} if cls is EarlyAPGDT else {}), **values}
    theirs, ours = Recorder(net or tiny_net(), dtype), Recorder(net or tiny_net(), dtype)
    images, labels = data or batch(theirs)
    counted_theirs, counted_ours = Counted(theirs), Counted(ours)
    attack = cls(counted_ours, threat, **values)
    reference = original(cls, counted_theirs, threat, attack.seed, **values)
    a, b = reference.perturb(images, labels), attack(images, labels)
    return (images, labels, robust(theirs, a, labels), robust(ours, b, labels), a, b, counted_theirs.passes,
            counted_ours.passes, theirs.paths(images), ours.paths(images))


@pytest.mark.parametrize("threat", THREATS, ids=lambda t: t.norm)
@pytest.mark.parametrize("cls", [EarlyAPGDCE, EarlyAPGDDLR, EarlyAPGDT], ids=lambda c: c.name)
def test_early_apgd_is_the_original_per_sample_in_float64(cls, threat):
    """Same robust set, same returned points of the robust samples, same iterates until a sample exits; a broken
    sample gets an adversarial point of the original's own trajectory, and the whole costs fewer passes."""
    images, labels, theirs, ours, a, b, passes_theirs, passes_ours, paths_theirs, paths_ours = both(cls, threat)
    assert torch.equal(theirs, ours)
    assert 0 < int(ours.sum()) < len(ours) - 3, "some samples break during the run, some stay robust"
    assert torch.equal(a[ours], b[ours])
    for sample, (path_a, path_b) in enumerate(zip(paths_theirs, paths_ours)):
        assert len(path_b) <= len(path_a) and all(torch.equal(p, q) for p, q in zip(path_a, path_b)), sample
        assert (len(path_b) == len(path_a)) == bool(ours[sample]) or sample < 3, "only broken samples stop early"
        if not ours[sample] and path_b:
            assert torch.equal(b[sample], path_b[-1]), "the first adversarial iterate is returned"
    assert passes_ours.forward < passes_theirs.forward and passes_ours.backward < passes_theirs.backward


def test_pass_counts_are_exact():
    """Counted by hand from the iterates each sample was differentiated at: one forward and one backward each, plus
    one clean forward per sample (and for MALT one forward and nine backwards per initially-correct sample)."""
    for cls, values in ((EarlyAPGDCE, {}), (EarlyAPGDT, {}), (EarlyAPGDT, {"ranking": "malt"})):
        images, labels, _, ours, _, _, _, passes, _, paths = both(cls, THREATS[0], n_iter=10, **values)
        steps = sum(len(p) for p in paths)
        correct = len(images) - 3
        malt = values.get("ranking") == "malt"
        assert passes.forward == len(images) + steps, cls.name
        assert passes.backward == steps - correct * malt + 9 * correct * malt, cls.name
    # Nothing breaks at a tiny ε: every correct sample takes all 2 × (10 + 1) gradient steps, as in the original.
    _, _, _, ours, _, _, theirs, passes, _, _ = both(EarlyAPGDCE, ThreatModel("linf", 1e-6), n_iter=10)
    assert int(ours.sum()) == 21 and passes == theirs == type(passes)(24 + 21 * 22, 21 * 22)


def test_malt_ranking_orders_targets_by_linearised_distance():
    """For a linear model MALT's score is the exact distance to each class boundary: the first target is the
    nearest class in the dual norm, which the logits order does not always pick."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).double().eval()
    images = torch.rand(40, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        logits = net(images)
    labels = logits.argmax(1)
    first = EarlyAPGDT(net, THREATS[0], ranking="malt").runs(images, labels, logits, labels >= 0)[0]
    weights = net[1].weight.detach()
    distance = (logits.gather(1, labels[:, None]) - logits) / (weights[labels][:, None] - weights[None]).abs().sum(2)
    distance.scatter_(1, labels[:, None], float("inf"))
    assert torch.equal(first, distance.argmin(1))
    assert not torch.equal(first, logits.scatter(1, labels[:, None], float("-inf")).argmax(1))


@pytest.mark.parametrize("threat", [ThreatModel("linf", 2 / 255), ThreatModel("l2", 0.3)], ids=lambda t: t.norm)
def test_early_pgd_follows_torchattacks_until_it_exits(threat):
    """Same iterates as torchattacks' PGD / PGDL2 until a sample is adversarial; robust set a subset of theirs."""
    theirs, ours = Recorder(tiny_net()), Recorder(tiny_net())
    images, labels = batch(theirs)
    cls = torchattacks.PGD if threat.norm == "linf" else torchattacks.PGDL2
    torch.manual_seed(3)
    a = cls(theirs, eps=threat.eps, alpha=2.5 * threat.eps / 10, steps=10)(images, labels)
    torch.manual_seed(3)
    counted = Counted(ours)
    b = EarlyPGD(counted, threat)(images, labels)
    robust_theirs, robust_ours = robust(theirs, a, labels), robust(ours, b, labels)
    assert not (robust_ours & ~robust_theirs).any(), "a sample robust to early_pgd is robust to torchattacks"
    assert torch.equal(a[robust_ours], b[robust_ours])
    paths_theirs, paths_ours = theirs.paths(images), ours.paths(images)
    for path_a, path_b in zip(paths_theirs, paths_ours):
        assert len(path_b) <= len(path_a) and all(torch.equal(p, q) for p, q in zip(path_a, path_b))
    assert counted.passes.forward == counted.passes.backward == sum(len(p) for p in paths_ours) < 10 * len(images)


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN trained for one epoch on 2,000 real CIFAR-10 training images, and 32 test images."""
    data = Path(os.environ["ARENA_DATA_DIR"])
    train_x, train_y = (t[:2000] for t in CIFAR10().load("train", data))
    test_x, test_y = (t[:32] for t in CIFAR10().load("test", data))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 8 * 8, 10))
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    for index in torch.randperm(2000).split(50):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(train_x[index]), train_y[index]).backward()
        optimizer.step()
    return net.eval(), test_x, test_y


def test_real_images_in_float64_same_robust_set_and_iterates(trained):
    """On real CIFAR-10 with a briefly trained CNN, samples exit all along the run (after checkpoints and step
    halvings too): robust sets and every iterate before an exit are the original's."""
    net, images, labels = trained
    exits = set()
    for cls in (EarlyAPGDCE, EarlyAPGDT):
        for threat in (ThreatModel("linf", 3 / 255), ThreatModel("l2", 0.25)):
            *_, theirs, ours, _, _, passes_theirs, passes_ours, paths_theirs, paths_ours = both(
                cls, threat, net=net, data=(images, labels), n_iter=20, n_restarts=1)
            assert torch.equal(theirs, ours) and 0 < int(ours.sum()) < len(images), (cls.name, threat.norm)
            for path_a, path_b, kept in zip(paths_theirs, paths_ours, ours):
                assert len(path_b) <= len(path_a) and all(torch.equal(p, q) for p, q in zip(path_a, path_b))
                exits |= set() if kept else {len(path_b)}
            assert passes_ours.backward < passes_theirs.backward
    assert max(exits) > 5, "some sample exits after the first checkpoint (iteration 4 of 20)"


def test_real_images_in_float32_differ_at_most_by_batch_size_rounding(trained):
    """In float32 a convolution's result may depend on the batch it is computed in (another kernel or blocking), so
    a sample's trajectory can drift once its batch shrinks: at most a few samples in a hundred may differ."""
    net, images, labels = trained
    for threat in (ThreatModel("linf", 3 / 255), ThreatModel("l2", 0.25)):
        *_, theirs, ours, _, _, _, _, _, _ = both(EarlyAPGDCE, threat, torch.float32, net=net, data=(images, labels),
                                                  n_iter=20, n_restarts=1)
        assert int((theirs != ours).sum()) <= 2, threat


def _early(cls: type, net: nn.Module, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel, **values):
    """``cls`` run on a batch from a fixed seed: the samples it broke, its passes and its iterates per sample."""
    torch.manual_seed(7)
    recorder = Recorder(net)
    counted = Counted(recorder)
    adversarial = cls(counted, threat, n_iter=20, **values)(images, labels)
    return ~robust(recorder, adversarial, labels), counted.passes, recorder.paths(images), adversarial


@pytest.mark.parametrize("cls", [EarlyAPGDCE, EarlyAPGDT], ids=lambda c: c.name)
def test_discarding_drops_only_samples_still_far_from_the_boundary(trained, cls):
    """Online discarding keeps every trajectory until its sample is dropped: it breaks a subset of what the attack
    breaks without it, those with the same points, at fewer passes; a sample it no longer breaks took exactly
    ``discard_after`` steps in each run. A margin no sample exceeds drops nothing."""
    net, images, labels = trained
    threat = ThreatModel("linf", 3 / 255)
    broken, passes, paths, full = _early(cls, net, images, labels, threat)
    correct = robust(Recorder(net), images, labels)
    runs = 1 if cls is EarlyAPGDCE else 9
    for margin in (0.02, 1e-6):  # the second drops every sample not broken by the first step
        lost, cheaper, short, points = _early(cls, net, images, labels, threat, discard_after=1, discard_margin=margin,
                                              discard_progress=1e9)
        assert not bool((lost & ~broken).any()), "a subset"
        assert torch.equal(points[lost], full[lost])
        assert cheaper.backward < passes.backward
        for sample in (broken & ~lost).nonzero().flatten().tolist():
            assert len(short[sample]) == 2 * runs and correct[sample], "the start and one step, in every run"
            assert all(torch.equal(p, q) for p, q in zip(paths[sample][:2], short[sample][:2])), "the first run's"
    assert bool((broken & ~lost).any()), "strictly: samples that break after the first step are lost"
    same = _early(cls, net, images, labels, threat, discard_after=1, discard_margin=1e9)
    assert torch.equal(same[0], broken) and same[1] == passes


@pytest.mark.parametrize("cls", [EarlyAPGDCE, EarlyAPGDT], ids=lambda c: c.name)
def test_discarding_keeps_samples_still_closing_in(trained, cls):
    """A sample far from the boundary but still approaching it is kept: with every margin counted as far, keeping
    the samples whose first step brought them closer costs more passes than dropping them all and breaks at least as
    much, and no more than the attack without discarding, each with the same point."""
    net, images, labels = trained
    threat = ThreatModel("linf", 3 / 255)
    broken, passes, _, full = _early(cls, net, images, labels, threat)
    strict = _early(cls, net, images, labels, threat, discard_after=1, discard_margin=1e-6, discard_progress=1e9)
    closing, cost, _, points = _early(cls, net, images, labels, threat, discard_after=1, discard_margin=1e-6,
                                      discard_progress=1e-9)
    assert not bool((strict[0] & ~closing).any()) and not bool((closing & ~broken).any()), "between the two"
    assert torch.equal(points[closing], full[closing])
    assert strict[1].backward < cost.backward <= passes.backward


def test_the_discarding_benchmark_replays_the_rule_the_attack_applies(trained):
    """``benchmarks.discarding`` judges the rule from a run with discarding off: the samples it says the rule drops
    before they break are exactly those the same run with discarding on no longer breaks."""
    net, images, labels = trained
    net = Recorder(net)  # float64: one answer per input, whatever batch it is in
    threat, rule = ThreatModel("linf", 2 / 255), {"discard_after": 6, "discard_margin": 0.05, "discard_progress": 0.02}
    todo = robust(net, images, labels).nonzero().flatten()
    watched = traced(net)
    torch.manual_seed(1)
    closest, broke_at = traced_run(EarlyAPGDCE(watched, threat, n_iter=20), watched, images, labels, labels, todo)
    torch.manual_seed(1)
    broken, _ = EarlyAPGDCE(net, threat, n_iter=20, **rule).run(images[todo], labels[todo], labels[todo], todo)
    lost = (broke_at > rule["discard_after"]) & dropped(closest, rule)
    assert torch.equal(broken, (broke_at >= 0) & ~lost)
    assert bool((dropped(closest, rule) & (broke_at < 0)).any()), "the rule drops survivors"


def test_counted_traces_the_samples_a_compacting_attack_still_covers():
    """The margin trace keeps one column per sample of the watched batch, NaN once a sample has exited; the
    convergence check leaves those samples out."""
    net = Recorder(tiny_net())
    images, labels = batch(net)
    counted = Counted(net)
    counted.watch(labels)
    adversarial = EarlyAPGDCE(counted, THREATS[0], n_iter=20)(images, labels)
    trace = counted.trace()
    assert trace.shape == (21, len(images))
    broken = ~robust(net, adversarial, labels)
    exited = trace.isnan().any(0)
    assert torch.equal(exited, broken), "exactly the broken (and never-attacked) samples have NaN"
    assert trace[:, :3].isnan().all(), "misclassified from the start: never attacked"
    measured = convergence([trace])
    assert measured["robust"] == int((~broken).sum())
    clean = convergence([trace[:, ~exited]])
    assert measured == clean


def test_early_attacks_play_as_matchups(tmp_path, registry):
    attacks = [{"name": "early_apgd_ce", "n_iter": 10}, {"name": "early_apgd_t", "n_iter": 10, "n_target_classes": 2,
                                                           "ranking": "malt"}, {"name": "early_pgd", "steps": 5}]
    store, run_id = play(tmp_path, registry, tiny(attacks=attacks, dataset={"samples": 30, "train_samples": 2000}))
    for m in store.matchups(run_id):
        assert m.status == "ok", m.detail
        assert m.robust_accuracy < m.clean_accuracy and m.max_norm <= 0.1 + 1e-6, m.attack
        attacked = int(m.attacked_mask.sum())
        steps = {"early_apgd_ce": 11, "early_apgd_t": 9 + 2 * 11, "early_pgd": 5}[m.attack]  # MALT: 9 backwards
        assert 0 < m.backward_passes < attacked * steps, "at ε = 0.1 samples break before the last step"


def test_a_bad_early_exit_benchmark_option_is_one_line_and_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["early_exit", "--models", "resnet+none"])
    with pytest.raises(SystemExit) as stopped:
        options()
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "--models: choose among cnn+none" in err and "Traceback" not in err
