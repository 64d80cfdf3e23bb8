"""The speed suite measures like with like: each matchup's time splits into phases that add up to it, timed inside
the arena's own engine, and the bare library called with the seed the arena gave it makes exactly the arena's
passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import arena
from arena import checks, engine, matchups
from arena.cost import Counted
from arena_plugins.cifar10 import CIFAR10
from arena_plugins.models import CNN
from benchmarks.speed import EPS, Phases, Sizes, bare_attack, run_bare

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]


def test_phases_add_up_and_the_bare_side_repeats_the_arenas_search(scenario_data_dir):
    images, labels = CIFAR10().load("test", scenario_data_dir)
    images, labels = images[:200], labels[:200]
    torch.manual_seed(0)
    model = CNN(normalize=True).build(10).eval()
    sizes = Sizes(train=0, art_train=0, samples=200, apgd_iter=5, square_queries=30, scale_samples=(),
                  scale_steps=())
    entries = [{"name": "fgsm"}, {"name": "square", "n_queries": sizes.square_queries}]
    built = matchups.Arena.attacker
    with Phases(CPU) as phases:
        result = arena.evaluate(model, images, labels, attacks=entries, threat=arena.ThreatModel("linf", EPS))
    assert engine.probe is checks.probe and matchups.Arena.attacker is built, "the engine is itself again"
    for m in result.matchups:
        parts = phases.found[m.attack]
        assert parts["attack"] > 0 and parts["judging"] > 0 and parts["checks"] > 0 and parts["setup"] >= 0
        assert sum(parts[p] for p in ("attack", "judging", "checks", "setup")) == pytest.approx(m.wall_time_s)

    correct = torch.from_numpy(result.clean_correct)
    counted = Counted(model).eval()
    run_bare(bare_attack("square", counted, sizes, phases.seeds["square"]), images[correct], labels[correct], CPU)
    (square,) = [m for m in result.matchups if m.attack == "square"]
    assert (counted.passes.forward, counted.passes.backward) == (square.forward_passes, square.backward_passes)


@pytest.mark.parametrize(("option", "message"), [
    (["benchmarks", "--repeats", "0"], "argument --repeats: '0' is not a whole number ≥ 1"),
    (["benchmarks", "--device", "gpu"], "--device gpu: not a device; use cpu, cuda, cuda:N or auto"),
    (["benchmarks.discarding", "--rows", "cnn_pgd_at:linf:8/255,cnn:linf"], "'cnn:linf': write MODEL:NORM:EPS"),
    (["benchmarks.seeds", "--row", "cnn_jpg:linf:8/255"], "'cnn_jpg:linf:8/255': write MODEL:NORM:EPS with MODEL"),
    (["benchmarks.suite", "--threats", "linf:8/0"], "'linf:8/0': EPS is a positive number or fraction"),
])
def test_a_bad_benchmark_option_is_one_line_and_exit_2(option, message):
    done = subprocess.run([sys.executable, "-m", *option], capture_output=True, text=True, cwd=REPO, check=False)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert message in done.stderr.strip().splitlines()[-1], "argparse's usage, then the error on one line"
