"""Each suite against itself at other seeds, per sample: how far one row of the suite benchmark moves when only the
attacks' random draws change (weights, images and attack code stay), the yardstick for a difference between suites.

    python -m benchmarks.seeds [--row cnn_jpeg:linf:8/255] [--seeds 3] [--samples 1000]

A suite's random draws are seeded by the scenario seed and its entries' keys, so the same suite under another label
(``autoattack_2``) draws other random starts and other squares on the same trained weights; the first seed of each is
the one ``benchmarks.suite`` plays. Every matchup is computed: a stored result is keyed by what it computes, not by the
label its draws were seeded from, so a store would hand every label the first one's result.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

from benchmarks import suite
from benchmarks.common import data_dir, play, write

SUITES = ("fast", "autoattack")


def label(name: str, seed: int) -> str:
    """The suite's label at its ``seed``-th draw (the first is the plain name)."""
    return name if seed == 1 else f"{name}_{seed}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", default="cnn_jpeg:linf:8/255", help="MODEL:NORM:EPS (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="draws per suite (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=1000, help="test images (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    args = parser.parse_args()
    if args.seeds < 2 or args.samples < 1:
        parser.error("--seeds must be ≥ 2 and --samples ≥ 1")
    try:
        key, norm, eps = suite.row(args.row)
    except argparse.ArgumentTypeError as error:
        parser.error(f"--row: {error}")
    torch.set_num_threads(args.threads)
    data_dir()
    scenario = suite.row_scenario(args.row, args.samples)
    entries = {entry["name"]: entry for entry in scenario["attacks"]}
    scenario["attacks"] = [{**entries[name], "label": label(name, seed)} if seed > 1 else entries[name]
                           for seed in range(1, args.seeds + 1) for name in SUITES]
    store, run_id = play(scenario)
    matchups = store.matchups(run_id)
    robust = {(name, seed): suite.robust([m for m in matchups if m.suite == label(name, seed)])
              for name in SUITES for seed in range(1, args.seeds + 1)}
    store.close()
    lines = ["| suite | seed | robust samples | passes/sample |", "| --- | --- | --- | --- |"]
    for (name, seed), mask in robust.items():
        cost = sum(m.passes_per_sample or 0.0 for m in matchups if m.suite == label(name, seed))
        lines.append(f"| {name} | {seed} | {int(mask.sum())} | {cost:.0f} |")
    lines += ["", "| pair | robust to the first only | robust to the second only |", "| --- | --- | --- |"]
    pairs = [(a, b) for a, b in itertools.combinations(robust, 2) if a[0] == b[0] or a[0] == "fast"]
    for a, b in pairs:
        lines.append(f"| {a[0]} {a[1]} · {b[0]} {b[1]} | {int((robust[a] & ~robust[b]).sum())} | "
                     f"{int((robust[b] & ~robust[a]).sum())} |")
    every = np.logical_or.reduce([robust["autoattack", s] for s in range(1, args.seeds + 1)])
    lines += ["", "Robust to `fast` at a seed but broken by AutoAttack at every seed: "
              + ", ".join(f"seed {s}: {int((robust['fast', s] & ~every).sum())}" for s in range(1, args.seeds + 1))
              + ".", "", f"{args.samples} CIFAR-10 test images, the suite benchmark's `{key}` at {norm} {eps} "
              "(recipe `short`), fast suite targets=3, probe_queries=100."]
    write("seeds", f"Each suite against itself at {args.seeds} seeds on {key} {norm} {eps}",
          f"python -m benchmarks.seeds --row {args.row} --seeds {args.seeds} --samples {args.samples}", lines)


if __name__ == "__main__":
    main()
