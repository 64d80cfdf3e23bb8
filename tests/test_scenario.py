"""Bad scenarios get one clear message (file, line, field, fix) and start no work; good ones validate."""

from __future__ import annotations

import re

import pytest
from conftest import REPO, run_cli, tiny, write_scenario

from arena.scenario import ScenarioError, load_scenario

GOOD = """\
name: lines
threat_model:
  norm: linf
  eps: 0.1
models:
  - name: cnn
    train: {epochs: 1}
attacks:
  - fgsm
  - name: pgd
    steps: 3
"""


def _bad(text_or_mapping, tmp_path, capsys) -> str:
    """Run the bad scenario through ``arena run`` and check that nothing started; return the error text."""
    path = write_scenario(tmp_path, text_or_mapping)
    results, cache = tmp_path / "results", tmp_path / "cache"
    code, out, err = run_cli(capsys, "run", str(path), "--results", str(results), "--quiet")
    assert code == 2 and out == ""
    assert not results.exists() and not cache.exists(), "a bad scenario must start no work"
    assert err.startswith(f"arena: error: {path}")
    return err


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("  - fgsm", "  - fsgm", r":9: attacks\[0\].name: unknown attack 'fsgm'; did you mean 'fgsm'\?"),
        ("  - name: cnn", "  - name: cnn_lstn",
         r":6: models\[0\].name: unknown model 'cnn_lstn'; did you mean 'cnn_lstm'\?"),
        ("eps: 0.1", "eps: -0.1", r":4: threat_model.eps: Input should be greater than 0 \(got -0.1\)"),
        ("norm: linf", "norm: l3", r":3: threat_model.norm: Input should be 'linf' or 'l2' \(got 'l3'\)"),
        ("steps: 3", "steps: three", r":11: attacks\[1\].steps: Input should be a valid integer \(got 'three'\)"),
        ("steps: 3", "steps: 0", r":11: attacks\[1\].steps: Input should be greater than or equal to 1 \(got 0\)"),
        ("steps: 3", "step: 3", r":11: attacks\[1\].step: unknown field 'step'; did you mean 'steps'\?"),
        ("{epochs: 1}", "{epochs: 1.5}", r":7: models\[0\].train.epochs: Input should be a valid integer"),
        ("{epochs: 1}", "{epoch: 1}", r":7: models\[0\].train.epoch: unknown field 'epoch'; did you mean 'epochs'\?"),
        ("name: lines", "name: lines\nthreat: x", r":2: threat: unknown field 'threat'; did you mean 'threat_model'\?"),
    ],
)
def test_bad_values_name_file_line_field_and_fix(old, new, expected, tmp_path, capsys):
    assert old in GOOD
    err = _bad(GOOD.replace(old, new), tmp_path, capsys)
    assert err.count("\n  ") == 1, f"expected exactly one problem:\n{err}"
    assert re.search(expected, err), err


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    err = _bad(GOOD.replace("eps: 0.1", "eps: -1").replace("  - fgsm", "  - fsgm"), tmp_path, capsys)
    assert "2 problems; nothing was run" in err and "threat_model.eps" in err and "attacks[0].name" in err


def test_missing_required_section(tmp_path, capsys):
    err = _bad(GOOD.replace("attacks:\n  - fgsm\n  - name: pgd\n    steps: 3\n", ""), tmp_path, capsys)
    assert "attacks: required field is missing" in err


def test_missing_file(tmp_path, capsys):
    code, out, err = run_cli(capsys, "run", str(tmp_path / "nope.yaml"), "--results", str(tmp_path / "r"))
    assert code == 2 and "nope.yaml: scenario file not found" in err and not (tmp_path / "r").exists()


def test_malformed_yaml_gives_its_line(tmp_path, capsys):
    err = _bad(GOOD.replace("  eps: 0.1", "  eps: [0.1"), tmp_path, capsys)
    assert "malformed YAML" in err and ".yaml:5" in err


def test_not_a_mapping(tmp_path, capsys):
    assert "a scenario is a YAML mapping" in _bad("- just\n- a list\n", tmp_path, capsys)


def test_the_same_entry_twice_needs_a_label(tmp_path, capsys, registry):
    err = _bad(tiny(attacks=["fgsm", "fgsm"]), tmp_path, capsys)
    assert "'fgsm' appears twice" in err and "label" in err
    attacks = ["fgsm", {"name": "pgd"}, {"name": "pgd", "steps": 50, "label": "pgd-50"}]
    ok = write_scenario(tmp_path, tiny(attacks=attacks))
    assert [a.key for a in load_scenario(ok, registry).attacks] == ["fgsm", "pgd", "pgd-50"]


def test_defaults_are_filled_and_eps_may_be_a_fraction(tmp_path, registry):
    scenario = load_scenario(write_scenario(tmp_path, GOOD.replace("eps: 0.1", "eps: 8/255")), registry)
    assert scenario.threat.eps == pytest.approx(8 / 255)
    assert scenario.attacks[1].params == {"steps": 3, "step_size": None, "random_start": True}
    assert scenario.models[0].train.lr == 1e-3 and scenario.models[0].train.batch_size == 64
    assert [d.key for d in scenario.defenses] == ["none"]


@pytest.mark.parametrize("name", ["linf_0.1.yaml", "l2_8_255.yaml", "quickstart.yaml"])
def test_shipped_scenarios_validate(name, registry, capsys):
    scenario = load_scenario(REPO / "scenarios" / name, registry)
    code, out, _ = run_cli(capsys, "validate", str(REPO / "scenarios" / name))
    assert code == 0 and "valid" in out
    assert {"cnn", "cnn_lstm"} <= {m.name for m in scenario.models}, "the seed study's architectures"


def test_shipped_budgets_are_the_seed_studies(registry):
    linf = load_scenario(REPO / "scenarios/linf_0.1.yaml", registry).threat
    assert (linf.norm, linf.eps) == ("linf", 0.1)
    second = load_scenario(REPO / "scenarios/l2_8_255.yaml", registry)
    assert [(t.norm, t.eps) for t in second.threats] == [("l2", pytest.approx(8 / 255)), ("linf", 0.1)]
    assert [m.name for m in second.models] == ["cnn", "cnn_lstm", "resnet18"]
    assert {a.name for a in second.attacks} == {"noise", "fgsm", "pgd"}


def test_scenario_error_is_raised_by_the_api_too(tmp_path, registry):
    with pytest.raises(ScenarioError, match="unknown attack"):
        load_scenario(write_scenario(tmp_path, tiny(attacks=["nope"])), registry)


def test_a_list_of_threat_models_gives_one_run_per_norm_and_eps(tmp_path, registry):

    threats = [{"norm": "l2", "eps": "8/255"}, {"norm": "linf", "eps": [0.1, "8/255"]}]
    scenario = load_scenario(write_scenario(tmp_path, tiny(threat_model=threats)), registry)
    assert [(t.norm, round(t.eps, 4)) for t in scenario.threats] == [("l2", 0.0314), ("linf", 0.0314), ("linf", 0.1)]
    bad = [{"norm": "l2", "eps": -1}, {"norm": "linf", "eps": 2, "x": 1}]
    with pytest.raises(ScenarioError) as error:
        load_scenario(write_scenario(tmp_path, tiny(threat_model=bad), "bad.yaml"), registry)
    message = str(error.value)
    assert "threat_model[0].eps: Input should be greater than 0" in message
    assert "threat_model[1].x: unknown field 'x' (known: eps, norm)" in message
    assert "threat_model[1].eps: L∞ ε = 2 lets an attack reach any image" in message


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("save_examples", -1, "save_examples: Value error, give a whole number ≥ 0 (examples kept per matchup), or all"),
    ("save_examples", "some", "save_examples: Value error, give a whole number ≥ 0"),
    ("threat_model", [], "threat_model: List should have at least 1 item"),
    ("report_to", ["wandb"], "report_to[0]: Input should be 'mlflow'"),
])
def test_new_fields_refuse_bad_values_with_one_line_each(field, value, expected, tmp_path, registry):
    with pytest.raises(ScenarioError) as error:
        load_scenario(write_scenario(tmp_path, tiny(**{field: value})), registry)
    assert "1 problem;" in str(error.value) and expected in str(error.value)
