"""The MLflow reporter, on when a scenario's ``report_to`` or ``arena run --report-to`` names ``mlflow``.

One MLflow run per arena run, in the experiment named after the scenario: the scenario's settings as parameters and
its file as an artifact; per matchup the metrics ``MODEL/DEFENSE/ATTACK/{clean_accuracy, robust_accuracy,
attack_success_rate, passes_per_sample, wall_time_s}``; at the end ``MODEL/DEFENSE/worst_case`` and the report's
pictures, ``leaderboard.html`` and the JSON summary as artifacts. The tracking URI is ``MLFLOW_TRACKING_URI``, else a
file store in ``./mlruns``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from arena import Matchup, Run, hookimpl

#: Open MLflow runs by arena run id (a process may play several arena runs, one per ε of a sweep).
_ACTIVE: dict[str, Any] = {}
METRICS = ("clean_accuracy", "robust_accuracy", "attack_success_rate", "passes_per_sample", "wall_time_s")


def _name(*parts: str) -> str:
    """An MLflow metric name: only letters, digits, ``_ - . / : `` and spaces are allowed (``pgd_at+jpeg`` is not)."""
    return "/".join(re.sub(r"[^\w\-. :]", "_", part) for part in parts)


def _client() -> Any:
    """An ``MlflowClient`` on ``MLFLOW_TRACKING_URI``, else on ``./mlruns``. MLflow keeps its file store working but
    asks for an opt-in (``MLFLOW_ALLOW_FILE_STORE``); a local folder is what this reporter promises, so it opts in
    for the default only."""
    from mlflow.tracking import MlflowClient

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = Path("mlruns").resolve().as_uri()
    return MlflowClient(tracking_uri=uri)


def _params(run: Run) -> dict[str, Any]:
    """The run's settings as MLflow parameters (MLflow keeps parameter values as text of at most 6,000 chars)."""
    settings = {k: v for k, v in run.summary().items() if k not in ("weights", "expected", "classes", "status",
                                                                   "finished_at")}
    return {k: (json.dumps(v) if isinstance(v, list | dict) else str(v))[:6000] for k, v in settings.items()}


@hookimpl
def arena_run_started(run_id: str, run: Run, results_dir: Path, report_to: list[str]) -> None:
    if "mlflow" not in report_to:
        return
    client = _client()
    experiment = client.get_experiment_by_name(run.scenario)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(run.scenario)
    tags = {"arena.run_id": run_id, "arena.results": str(Path(results_dir).resolve())}
    tracked = client.create_run(experiment_id, run_name=run_id, tags=tags)
    for key, value in _params(run).items():
        client.log_param(tracked.info.run_id, key, value)
    with tempfile.TemporaryDirectory() as folder:
        scenario = Path(folder) / "scenario.yaml"
        scenario.write_text(run.scenario_text, encoding="utf-8")
        client.log_artifact(tracked.info.run_id, str(scenario))
    _ACTIVE[run_id] = (client, tracked.info.run_id)


@hookimpl
def arena_matchup_finished(run_id: str, matchup: Matchup) -> None:
    if run_id not in _ACTIVE:
        return
    client, tracked = _ACTIVE[run_id]
    numbers = matchup.summary()
    for metric in METRICS:
        if numbers.get(metric) is not None:
            client.log_metric(tracked, _name(matchup.model, matchup.defense, matchup.attack, metric), numbers[metric])


@hookimpl
def arena_run_finished(run_id: str, status: str, summary: Path | None, report: Path | None) -> None:
    if run_id not in _ACTIVE:
        return
    client, tracked = _ACTIVE.pop(run_id)
    try:
        if summary is not None:
            for row in json.loads(Path(summary).read_text(encoding="utf-8"))["leaderboard"]:
                if row.get("worst_case") is not None:
                    client.log_metric(tracked, _name(row["model"], row["defense"], "worst_case"), row["worst_case"])
            client.log_artifact(tracked, str(summary))
        if report is not None:
            client.log_artifacts(tracked, str(report), artifact_path="report")
    finally:
        client.set_terminated(tracked, "FINISHED" if status == "complete" else "KILLED")
