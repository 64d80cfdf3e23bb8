"""The seed study's architectures, built exactly as specified, and the built-in attacks' threat-model geometry."""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import nn

from arena.threat import ThreatModel
from arena_plugins.fgsm import FGSM
from arena_plugins.models import CNN, CNNLSTM, Normalize
from arena_plugins.pgd import PGD


def _build(cls, **params):
    defaults = {k: p.default for k, p in cls.params.items()}
    return cls(**{**defaults, **params}).build(10).eval()


def test_cnn_is_six_3x3_convs_each_followed_by_relu_then_batchnorm():
    net = _build(CNN)
    layers = list(net.features)
    assert isinstance(layers[0], Normalize), "normalisation lives inside the model"
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.stride[0], c.kernel_size) for c in convs] == [
        (32, 1, (3, 3)), (32, 2, (3, 3)), (64, 1, (3, 3)), (64, 2, (3, 3)), (64, 1, (3, 3)), (128, 2, (3, 3))
    ]
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            assert isinstance(layers[i + 1], nn.ReLU) and isinstance(layers[i + 2], nn.BatchNorm2d)
    assert net.classifier.in_features == 128 * 4 * 4 and net.classifier.out_features == 10
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_cnn_lstm_reads_the_trunk_as_16_steps_of_128_features():
    net = _build(CNNLSTM)
    assert (net.lstm.input_size, net.lstm.hidden_size, net.lstm.num_layers) == (128, 64, 3)
    x = torch.rand(2, 3, 32, 32)
    features = net.features(x)  # [2, 128, 4, 4]
    steps = []
    net.lstm.register_forward_hook(lambda module, inputs, output: steps.append(inputs[0]))
    net(x)
    sequence = steps[0]
    assert sequence.shape == (2, 16, 128)
    # step t holds the 128 channels of spatial position t (flatten + transpose), not a raw reshape's mix of channels
    assert torch.equal(sequence[:, 5], features[:, :, 1, 1])
    assert not torch.equal(sequence, features.reshape(2, 16, 128))


def test_input_gradients_flow_in_eval_mode_for_both_models():
    for cls in (CNN, CNNLSTM):
        net = _build(cls)
        x = torch.rand(4, 3, 32, 32, requires_grad=True)
        net(x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0 and not net.training


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_takes_one_full_step_of_size_eps(norm):
    threat = ThreatModel(norm, 0.1 if norm == "linf" else 8 / 255)
    net = _build(CNN)
    x = torch.rand(8, 3, 32, 32) * 0.5 + 0.25  # far from the box edges, so nothing is clipped
    y = torch.randint(0, 10, (8,))
    adversarial = FGSM(net, threat)(x, y)
    assert torch.allclose(threat.measure(adversarial - x), torch.full((8,), threat.eps), atol=1e-6)
    if norm == "linf":
        assert torch.allclose((adversarial - x).abs(), torch.full_like(x, 0.1), atol=1e-6)


@pytest.mark.parametrize(("norm", "cls"), [("linf", torchattacks.PGD), ("l2", torchattacks.PGDL2)])
def test_pgd_wraps_torchattacks(norm, cls):
    threat = ThreatModel(norm, 0.1 if norm == "linf" else 8 / 255)
    attack = PGD(_build(CNN), threat, steps=4, step_size=None, random_start=True)
    assert type(attack.attack) is cls and attack.attack.eps == threat.eps
    assert attack.attack.alpha == pytest.approx(2.5 * threat.eps / 4)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    assert (threat.measure(attack(x, y) - x) <= threat.eps + 1e-6).all()
