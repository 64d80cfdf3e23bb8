"""The GPU path's switches, checked on the CPU: bf16 attack gradients, torch.compile and channels-last change how
the network runs, never what counts (every example audited, judged in float32), and give the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny, write_scenario

import arena
from arena.cost import Counted
from arena.data import Data
from arena.matchups import Arena
from arena.runtime import Runtime
from arena.scenario import load_scenario
from arena_plugins.cifar10 import CIFAR10
from arena_plugins.models import CNN


@pytest.fixture(scope="module")
def trained(scenario_data_dir):
    """A CNN trained one epoch on 2,000 real images, and 200 test images."""
    x, y = CIFAR10().load("train", scenario_data_dir)
    torch.manual_seed(0)
    net = CNN(normalize=True).build(10)
    arena.Trainer(arena.TrainConfig(epochs=1), 0, torch.device("cpu"), 10, progress=False).fit(net, x[:2000], y[:2000])
    images, labels = CIFAR10().load("test", scenario_data_dir)
    return net.eval(), images[:200], labels[:200]


def test_bf16_attacks_are_audited_and_judged_in_float32(trained):
    net, images, labels = trained
    threat = arena.ThreatModel("linf", 8 / 255)
    attacks = [{"name": "pgd", "steps": 5}]
    full = arena.evaluate(net, images, labels, attacks=attacks, threat=threat)
    half = arena.evaluate(net, images, labels, attacks=attacks, threat=threat, runtime=Runtime(precision="bf16"))
    (m_full,), (m_half,) = full.matchups, half.matchups
    assert m_half.status == "ok" and m_half.max_norm <= threat.eps + 1e-6, "audited like any other"
    assert np.array_equal(full.clean_correct, half.clean_correct), "clean predictions are float32 in both"
    assert m_half.key != m_full.key, "a bf16 result is never reused as a float32 one"
    assert abs(m_half.robust_accuracy - m_full.robust_accuracy) <= 0.05
    counted = Counted(net, autocast=torch.bfloat16)
    assert counted(images[:4]).dtype == torch.float32


def test_compile_and_channels_last_give_the_same_predictions_and_gradients(trained):
    net, images, labels = trained
    x = images[:64].clone().requires_grad_(True)
    eager = net(x)
    (reference,) = torch.autograd.grad(torch.nn.functional.cross_entropy(eager, labels[:64]), x)
    for runtime in (Runtime(channels_last=True), Runtime(compile=True)):
        prepared = runtime.prepare(net)
        out = prepared(x)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(out, labels[:64]), x)
        assert torch.equal(out.argmax(1), eager.argmax(1)), runtime
        assert torch.allclose(out, eager, atol=1e-4), runtime
        # Other kernels reorder float sums, and a rounding difference can flip a ReLU at its kink, which changes one
        # sample's gradient by a few percent (seen: 2.6 % on one of 64 with two threads on an AMD EPYC, 6e-7 for the
        # median): compare the typical sample and the whole direction, not every element.
        error = (grad - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)
        assert float(error.median()) < 1e-3, (runtime, error)
        assert torch.nn.functional.cosine_similarity(grad.flatten(), reference.flatten(), dim=0) > 0.999, runtime


def test_runtime_settings_enter_the_matchup_key_only_when_on(tmp_path, registry):
    scenario = load_scenario(write_scenario(tmp_path, tiny(attacks=["fgsm"])), registry)
    data = Data.load(scenario, registry)
    keys = {}
    for name, runtime in {"default": Runtime(), "bf16": Runtime("bf16"), "compiled": Runtime(compile=True)}.items():
        engine = Arena(scenario, registry, tmp_path / name, runtime=runtime, threat=scenario.threat)
        keys[name] = engine.matchup_keys(data, scenario.models[0], scenario.defenses[0])["fgsm"]
    assert len(set(keys.values())) == 3
    assert Runtime().key() == {} and Runtime("bf16", channels_last=True).key() == {"precision": "bf16",
                                                                                  "channels_last": True}


def test_evaluation_images_move_to_the_device_once(trained):
    """Batches are cut from one copy of the evaluation slice on the device, not moved batch by batch."""
    _, images, labels = trained
    data = Data(dataset=CIFAR10(), scenario=None, images=images, labels=labels)
    meta = torch.device("meta")  # a device without data: a copy made per call would be a new tensor each time
    moved = data.on(meta)
    assert moved[0].device == meta and moved[1].device == meta and moved[0].shape == images.shape
    assert data.on(meta)[0] is moved[0] and data.on(meta)[1] is moved[1]
    assert data.on(torch.device("cpu"))[0] is images, "nothing moves to the device it is on"
