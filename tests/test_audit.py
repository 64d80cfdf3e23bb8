"""The audit: every adversarial batch must be finite, inside [0, 1] and within ε; violations are never clipped away."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import run_cli, tiny, write_scenario

from arena.audit import PluginOutputError, audit
from arena.leaderboard import rows
from arena.store import Store
from arena.threat import ThreatModel

LINF, L2 = ThreatModel("linf", 0.1), ThreatModel("l2", 8 / 255)


def _images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25


def test_a_perturbation_inside_the_ball_passes_and_is_measured():
    x = _images()
    delta = torch.full_like(x, 0.1) * torch.tensor([1, -1, 1, 0.5]).view(-1, 1, 1, 1)
    report = audit("t", x, x + delta, LINF)
    assert report.violation is None and torch.allclose(report.norms, torch.tensor([0.1, 0.1, 0.1, 0.05]))
    direction = torch.randn_like(x)
    on_l2_sphere = x + 0.5 * (8 / 255) * direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert audit("t", x, on_l2_sphere, L2).violation is None


@pytest.mark.parametrize(
    ("make", "threat", "message"),
    [
        (lambda x: x + 0.1 + 1e-4, LINF, r"linf norm up to 0.1001 > ε = 0.1 on 4 of 4 samples"),
        (lambda x: x + 8 / 255 / 3072**0.5 * 1.01, L2, r"l2 norm up to 0.031\d+ > ε = 0.0313725 on 4 of 4 samples"),
        (lambda x: torch.where(torch.arange(4).view(-1, 1, 1, 1) == 2, x, x.clamp(0, 0.3)), LINF, r"on 3 of 4 samples"),
        (lambda x: x.index_fill(0, torch.tensor([1]), float("nan")), LINF, r"3072 non-finite values"),
        (lambda x: x * 1.0 + (x > 0.7) * 0.05 + 0.3 * (x > 0.74), LINF, r"values outside \[0, 1\]"),
    ],
)
def test_violations_are_reported_with_the_measured_norm(make, threat, message):
    x = _images()
    report = audit("t", x, make(x), threat)
    assert report.violation is not None
    assert re.search(message, report.violation), report.violation


def test_wrong_shape_or_dtype_names_the_plugin():
    x = _images()
    with pytest.raises(PluginOutputError, match=r"attack 'bad' returned \(3, 3, 32, 32\) torch.float32"):
        audit("bad", x, x[1:], LINF)
    with pytest.raises(PluginOutputError, match="torch.float64"):
        audit("bad", x, x.double(), LINF)


def test_a_cheating_attack_is_caught_and_marked_invalid(tmp_path, capsys):
    path = write_scenario(tmp_path, tiny(attacks=["fgsm", {"name": "cheat", "factor": 2.0}]))
    code, out, err = run_cli(capsys, "run", str(path), "--results", str(tmp_path / "r"), "-p", "arena_test_plugins",
                             "-q")
    assert code == 1
    store = Store(tmp_path / "r")
    fgsm, cheat = store.matchups(store.run().id)
    assert cheat.status == "invalid" and cheat.robust_accuracy is None
    assert "linf norm up to 0.2 > ε = 0.1" in cheat.detail and cheat.max_norm == pytest.approx(0.2, abs=1e-6)
    assert "INVALID: cheat vs cnn+none" in err
    (row,) = rows([fgsm, cheat])
    assert row.attacks["cheat"] == "invalid" and row.worst_case == fgsm.robust_accuracy and row.rank is None
    assert "INVALID" in out and "cheat: invalid, left out of the worst case" in out
