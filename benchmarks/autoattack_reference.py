"""The arena's ``autoattack`` suite against the original AutoAttack (``standard``) on the same model, samples and ε.

The models are ``linf_0.1``'s CNN, undefended and PGD-trained (``pgd_at``), from the weights cache (trained once if
missing). The arena plays ``attacks: [autoattack]`` through its own matchup path (audit, cascade, pass counting);
the original is pyautoattack's ``AutoAttack(version="standard").run_standard_evaluation`` on the same defended
module. The two must agree on robust accuracy within 0.5 points.

    python -m benchmarks.autoattack_reference [--samples 1000]
"""

from __future__ import annotations

import time

import torch
from pyautoattack import AutoAttack

from arena.data import Data
from arena.engine import predict
from arena.leaderboard import rows
from arena.matchups import Arena
from arena.registry import load_registry
from arena.scenario import load_scenario
from benchmarks.common import REPO, arguments, play, scenario, write

DEFENSES = ("none", "pgd_at")


def main() -> None:
    args = arguments(__doc__.splitlines()[0], samples=1000)
    base = scenario("linf_0.1")
    defenses = [d for d in base["defenses"] if (d if isinstance(d, str) else d.get("label")) in DEFENSES]
    data = {**base, "models": base["models"][:1], "defenses": defenses, "attacks": ["autoattack"],
            "dataset": {**base["dataset"], "samples": args.samples}}
    started = time.perf_counter()
    store, run_id = play(data)
    arena_time = time.perf_counter() - started
    table = {(r.model, r.defense): r for r in rows(store.matchups(run_id))}

    registry = load_registry()
    linf = load_scenario(REPO / "scenarios" / "linf_0.1.yaml", registry)
    arena = Arena(linf, registry, store.results_dir, progress=False)
    arena.threat = linf.threat
    evaluation = Data.load(linf, registry)
    images, labels = evaluation.images[: args.samples], evaluation.labels[: args.samples]
    lines = ["| model | defense | clean | arena `autoattack` | original AutoAttack | difference | arena time | "
             "original time | arena passes/sample |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    worst = 0.0
    for defense_ref in (d for d in linf.defenses if d.key in DEFENSES):
        model_ref = linf.models[0]
        module = arena.networks.defended(evaluation, model_ref, defense_ref)
        original = AutoAttack(module, norm="Linf", eps=linf.threat.eps, version="standard", seed=0)
        original.logger.setLevel("WARNING")
        started = time.perf_counter()
        adversarial, _ = original.run_standard_evaluation(images, labels, batch_size=linf.batch_size)
        original_time = time.perf_counter() - started
        robust = float((predict(module, adversarial, linf.batch_size, torch.device("cpu")) == labels).float().mean())
        row = table[model_ref.key, defense_ref.key]
        ours = row.attacks["autoattack"]
        worst = max(worst, abs(ours - robust))
        pair_time = sum(m.wall_time_s for m in store.matchups(run_id)
                        if m.model == row.model and m.defense == row.defense)
        lines.append(f"| {row.model} | {row.defense} | {row.clean_accuracy:.1%} | {ours:.1%} | {robust:.1%} | "
                     f"{100 * (ours - robust):+.1f} pts | {pair_time:.0f} s | {original_time:.0f} s | "
                     f"{row.passes:.0f} |")
    lines += ["", f"{args.samples} test images, L∞ ε = {linf.threat.eps:g}, {torch.get_num_threads()} torch threads, "
                  f"CPU. Largest difference: {100 * worst:.2f} points ({'within' if worst <= 0.005 else 'OUTSIDE'} "
                  f"0.5 points). Whole arena run {arena_time:.0f} s."]
    write("autoattack_reference", "The arena's autoattack suite against the original AutoAttack",
          f"python -m benchmarks.autoattack_reference --samples {args.samples}", lines)


if __name__ == "__main__":
    main()
