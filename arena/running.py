"""Run orchestration shared by ``arena run`` and the Python API: one ``run_scenario`` plays a validated scenario once
per threat model (an ε sweep, several norms), and ``resolve_device`` turns ``"auto"`` and device names into a device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from arena.active import ACTIVE_TESTS
from arena.errors import ArenaError
from arena.executors import Executor
from arena.leaderboard import Row
from arena.matchups import Arena, Shared
from arena.progress import run_progress
from arena.records import Matchup, Run
from arena.registry import Registry
from arena.runtime import Runtime
from arena.scenario import Scenario
from arena.threat import ThreatModel
from arena.training import WeightsCache


def resolve_device(name: str | torch.device, argument: str = "--device") -> torch.device:
    """The device ``name`` means (``auto``: the GPU when torch sees one, else the CPU), refused before any work when
    this machine has no such device; ``argument`` names the option or parameter in the message."""
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise ArenaError(f"{argument} {name!r}: not a device; use cpu, cuda, cuda:N or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ArenaError(f"{argument} {name}: not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArenaError(f"{argument} {name}: no CUDA GPU is visible to torch on this machine; use cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ArenaError(f"{argument} {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s); use cuda:0 "
                         f"to cuda:{torch.cuda.device_count() - 1}")
    if device.type not in ("cpu", "cuda"):
        raise ArenaError(f"{argument} {name}: the arena runs on cpu or cuda; use one of those, or auto")
    return device


@dataclass
class Played:
    """One finished run of a scenario (one threat model of it): its record, matchups and the files written."""

    threat: ThreatModel
    run: Run
    matchups: list[Matchup]
    #: The leaderboard rows of the run, as ``arena leaderboard`` prints them.
    table: list[Row] | None
    store_path: Path
    summary_path: Path | None
    report_path: Path | None

    @property
    def failed(self) -> list[Matchup]:
        """The matchups that crashed or failed their audit (skipped ones are not failures)."""
        return [m for m in self.matchups if m.status.failed]


def run_scenario(
    scenario: Scenario,
    registry: Registry,
    results: str | Path,
    *,
    device: str | torch.device = "auto",
    cache: WeightsCache | None = None,
    executor: Executor | None = None,
    progress: bool = True,
    fresh: bool = False,
    report: bool = False,
    report_to: Iterable[str] = (),
    runtime: Runtime | None = None,
    active_tests: bool = False,
    on_played: Callable[[Played], None] | None = None,
) -> list[Played]:
    """Play ``scenario`` into the results folder ``results``: one run per threat model (each ε of a sweep, each
    norm), smallest ε first, by ``executor`` (this process by default); ``on_played`` sees each run as it finishes.
    Matchups stored under the same key are reused unless ``fresh``; ``active_tests`` adds the binarization test."""
    device = resolve_device(device, "device")
    played: list[Played] = []
    total = len(scenario.threats) * len(scenario.models) * len(scenario.defenses) * len(scenario.attacks)
    shared = Shared()  # data, networks, model-level checks and clean predictions: once for every ε
    with run_progress(total, progress) as bar:  # one bar over every run of a sweep
        for threat in scenario.threats:
            arena = Arena(scenario, registry, Path(results), device, cache or WeightsCache(), progress=progress,
                          bar=bar, fresh=fresh, threat=threat, report=report, report_to=tuple(report_to),
                          runtime=runtime or Runtime(), active_tests=ACTIVE_TESTS if active_tests else (),
                          shared=shared)
            run_id = arena.play(executor)
            with arena.store as store:
                run, matchups = store.run(run_id), store.matchups(run_id)
            report_path = arena.report_path / "leaderboard.html" if arena.report_path else None
            played.append(Played(threat, run, matchups, arena.table, arena.store.path, arena.summary_path,
                                 report_path))
            if on_played is not None:
                on_played(played[-1])
    return played
