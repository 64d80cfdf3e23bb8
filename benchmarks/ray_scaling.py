"""``--executor ray --workers 2`` against ``--executor local`` with one torch thread, on this machine.

Four model × defense pairs of the CNN (``linf_0.1``'s cached weights, so only attacks run): undefended, median
filter, bit-depth squeezing and reverse sigmoid, each attacked with PGD-10 on the first test images. Both runs
compute every matchup (``fresh``); the Ray time includes starting the local cluster and its workers. The stored
per-sample results must be identical.

    python -m benchmarks.ray_scaling [--samples 2000]
"""

from __future__ import annotations

import time

import torch

from arena.executors import RayExecutor
from benchmarks.common import arguments, play, scenario, write

DEFENSES = ["none", {"name": "art.spatial_smoothing", "window_size": 3, "label": "median_3x3"},
            {"name": "art.feature_squeezing", "bit_depth": 5, "label": "squeeze_5bit"},
            {"name": "art.reverse_sigmoid", "label": "reverse_sigmoid"}]


def per_sample(store, run_id: str) -> dict:
    return {(m.model, m.defense, m.attack): m.robust_correct.tolist() for m in store.matchups(run_id)}


def main() -> None:
    args = arguments(__doc__.splitlines()[0], samples=2000)
    torch.set_num_threads(1)
    base = scenario("linf_0.1")
    data = {**base, "models": base["models"][:1], "defenses": DEFENSES,
            "attacks": [{"name": "pgd", "steps": 10, "random_start": True}],
            "dataset": {**base["dataset"], "samples": args.samples}}
    started = time.perf_counter()
    local_store, local_run = play(data)
    local = time.perf_counter() - started
    started = time.perf_counter()
    ray_store, ray_run = play(data, executor=RayExecutor(workers=2))
    distributed = time.perf_counter() - started
    same = per_sample(local_store, local_run) == per_sample(ray_store, ray_run)
    lines = ["| executor | workers × torch threads | wall time | speed-up |", "| --- | --- | --- | --- |",
             f"| local | 1 × 1 | {local:.0f} s | 1.00 × |",
             f"| ray (local cluster, started by the run) | 2 × 1 | {distributed:.0f} s | {local / distributed:.2f} × |",
             "", f"4 pairs (cnn × {', '.join(d if isinstance(d, str) else d['label'] for d in DEFENSES)}), PGD-10, "
                 f"{args.samples} test images, L∞ ε = 0.1, 2-core CPU. Identical stored per-sample results: "
                 f"{'yes' if same else 'NO'}."]
    write("ray_scaling", "Ray executor against one process", f"python -m benchmarks.ray_scaling --samples "
          f"{args.samples}", lines)


if __name__ == "__main__":
    main()
