"""The MLflow reporter against a real local MLflow file store, read back with MLflow's own client."""

from __future__ import annotations

import mlflow  # installed by the test extra (arena[mlflow]): never skipped
import pytest
from conftest import run_cli, tiny, write_scenario


def test_a_run_lands_in_mlflow_with_params_metrics_and_artifacts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default store is ./mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    scenario = write_scenario(tmp_path, tiny(defenses=["none", {"name": "art.jpeg", "label": "pgd_at+jpeg"}],
                                             attacks=["fgsm", {"name": "pgd", "steps": 2}]))
    code, _, err = run_cli(capsys, "run", str(scenario), "--results", str(tmp_path / "r"), "-q",
                           "--report-to", "mlflow")
    assert code == 0, err

    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("tiny")
    (tracked,) = client.search_runs([experiment.experiment_id])
    from arena.store import Store

    store = Store(tmp_path / "r")
    run = store.run()
    assert tracked.info.run_name == run.id and tracked.info.status == "FINISHED"
    assert tracked.data.params["scenario"] == "tiny" and tracked.data.params["norm"] == "linf"
    metrics = tracked.data.metrics
    for m in store.matchups(run.id):
        prefix = f"{m.model}/{m.defense.replace('+', '_')}/{m.attack}"
        assert metrics[f"{prefix}/robust_accuracy"] == pytest.approx(m.robust_accuracy)
        assert metrics[f"{prefix}/clean_accuracy"] == pytest.approx(m.clean_accuracy)
        assert metrics[f"{prefix}/passes_per_sample"] == pytest.approx(m.passes_per_sample)
        assert f"{prefix}/wall_time_s" in metrics
    assert 0 <= metrics["cnn/none/worst_case"] <= metrics["cnn/none/fgsm/robust_accuracy"]
    assert "cnn/pgd_at_jpeg/worst_case" in metrics
    artifacts = {a.path for a in client.list_artifacts(tracked.info.run_id)}
    report = {a.path for a in client.list_artifacts(tracked.info.run_id, "report")}
    assert {"scenario.yaml", f"{run.id}.json", "report"} <= artifacts
    assert {"report/leaderboard.html", "report/leaderboard.png", "report/robustness.png"} <= report
    text = (tmp_path / "scenario.yaml").read_text()
    downloaded = client.download_artifacts(tracked.info.run_id, "scenario.yaml", str(tmp_path))
    assert open(downloaded).read() == text


def test_mlflow_stays_off_unless_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scenario = write_scenario(tmp_path, tiny(attacks=["fgsm"]))
    assert run_cli(capsys, "run", str(scenario), "--results", str(tmp_path / "r"), "-q", "--no-report")[0] == 0
    assert not (tmp_path / "mlruns").exists()
    with pytest.raises(SystemExit) as exit_:
        run_cli(capsys, "run", str(scenario), "--results", str(tmp_path / "r"), "--report-to", "wandb")
    assert exit_.value.code == 2 and "invalid choice: 'wandb'" in capsys.readouterr().err


def test_asking_for_a_tracker_that_is_not_installed_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import arena.matchups

    monkeypatch.setitem(arena.matchups.REPORTERS, "mlflow", "mlflow_is_not_installed_here")
    scenario = write_scenario(tmp_path, tiny(attacks=["fgsm"], report_to=["mlflow"]))
    code, _, err = run_cli(capsys, "run", str(scenario), "--results", str(tmp_path / "r"))
    assert code == 2 and "report_to mlflow: the mlflow_is_not_installed_here package is not installed" in err
    assert "pip install 'arena[mlflow]'" in err and not (tmp_path / "r").exists(), "no store, no training"
