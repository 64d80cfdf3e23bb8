"""The built-in reporter: every run's events as JSON lines in ``<results>/runs/<run id>.jsonl``.

One line per event (``run_started``, ``matchup_finished``, ``run_finished``), appended and flushed as it happens,
so another program can follow a run with ``tail -f``; a template for reporters that send results elsewhere.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from arena import Matchup, Run, hookimpl


def _write(results_dir: Path, run_id: str, event: str, **fields: Any) -> None:
    path = Path(results_dir) / "runs" / f"{run_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"event": event, "run_id": run_id, "time": datetime.now(UTC).isoformat(timespec="seconds"), **fields}
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(line, default=str) + "\n")


@hookimpl
def arena_run_started(run_id: str, run: Run, results_dir: Path) -> None:
    _write(results_dir, run_id, "run_started", run=run.summary())


@hookimpl
def arena_matchup_finished(run_id: str, matchup: Matchup, results_dir: Path) -> None:
    _write(results_dir, run_id, "matchup_finished", matchup=matchup.summary())


@hookimpl
def arena_run_finished(run_id: str, status: str, results_dir: Path) -> None:
    _write(results_dir, run_id, "run_finished", status=status)
