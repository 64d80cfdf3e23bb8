"""What the benchmarks share: the shipped scenarios as a starting point, played through the arena's own pipeline
with the default weights cache (so cached weights are reused and missing ones are trained once), and a Markdown
table written to ``benchmarks/results``."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from arena.cli import positive
from arena.data import Data
from arena.defended import Defended
from arena.executors import Executor
from arena.matchups import Arena
from arena.registry import load_registry
from arena.scenario import load_scenario
from arena.schema import Scenario
from arena.store import Store

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def arguments(description: str, samples: int) -> argparse.Namespace:
    """The options every benchmark takes: how many test images, and the torch threads to use."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--samples", type=positive, default=samples, help="test images (default: %(default)s)")
    parser.add_argument("--threads", type=positive, default=torch.get_num_threads(), help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir()
    return args


def data_dir() -> Path:
    """``ARENA_DATA_DIR``, set to ``../shared/data`` beside the repository when unset and that folder exists."""
    if not os.environ.get("ARENA_DATA_DIR") and (REPO.parent / "shared" / "data").is_dir():
        os.environ["ARENA_DATA_DIR"] = str(REPO.parent / "shared" / "data")
    if not os.environ.get("ARENA_DATA_DIR"):
        print("benchmarks: set ARENA_DATA_DIR to the folder holding cifar10.npz", file=sys.stderr)
        raise SystemExit(2)
    return Path(os.environ["ARENA_DATA_DIR"])


def scenario(base: str, **overrides: Any) -> dict[str, Any]:
    """A shipped scenario (``scenarios/<base>.yaml``) with top-level fields replaced; models and recipe are kept,
    so the weights it trained are found in the cache."""
    data = yaml.safe_load((REPO / "scenarios" / f"{base}.yaml").read_text())
    data.update(overrides)
    return data


def arena(data: dict[str, Any], results: Path | None = None, **options: Any) -> Arena:
    """The arena for a scenario written as a dict (validated as a file would be), storing into ``results`` (a fresh
    folder by default); ``options``: more ``Arena`` fields."""
    folder = Path(tempfile.mkdtemp(prefix="arena-bench-"))
    path = folder / "scenario.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    registry = load_registry()
    return Arena(load_scenario(path, registry), registry, results or folder / "results", progress=False, **options)


def networks(data: dict[str, Any], pairs: list[str] | None = None) -> tuple[Scenario, Data, dict[str, Defended]]:
    """A scenario's threat, evaluation images and the defended network of each ``model+defense`` pair of its entries
    (all by default), trained once or loaded from the weights cache, for benchmarks that attack networks directly."""
    built = arena(data)
    loaded = Data.load(built.scenario, built.registry)
    chosen = {f"{m.key}+{d.key}": (m, d) for m in built.scenario.models for d in built.scenario.defenses}
    return built.scenario, loaded, {pair: built.networks.defended(loaded, *chosen[pair]) for pair in pairs or chosen}


def play(data: dict[str, Any], results: Path | None = None, fresh: bool = True,
         executor: Executor | None = None, **options: Any) -> tuple[Store, str]:
    """Play a scenario through the arena (``fresh``: every matchup is computed, none reused; ``executor``: where
    the pairs run, this process by default; ``options``: more ``Arena`` fields, e.g. device and runtime); returns
    the store and the run id."""
    played = arena(data, results, fresh=fresh, **options)
    run_id = played.play(executor)
    return played.store, run_id


def median_min(values: list[float]) -> str:
    """``median (min)`` of repeated timings."""
    return f"{statistics.median(values):.1f} s ({min(values):.1f} s)"


def write(name: str, title: str, command: str, lines: list[str]) -> Path:
    """Write ``results/<name>.md`` with the command that produced it, and print it."""
    RESULTS.mkdir(exist_ok=True)
    text = "\n".join([f"# {title}", "", f"`{command}`", "", *lines, ""])
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    print(text)
    return path
