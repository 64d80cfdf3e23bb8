"""What adding Square after APGD-CE costs on the undefended CNN: in cascade evaluation (Square runs only on the
samples APGD-CE left robust) and in full evaluation (Square on every initially-correct sample), against APGD-CE
alone. Timings are each pair's summed matchup wall time, interleaved and repeated; passes are per evaluated sample.

    python -m benchmarks.cascade [--samples 1000]
"""

from __future__ import annotations

from arena.leaderboard import rows
from benchmarks.common import arguments, median_min, play, scenario, write

VARIANTS = {
    "apgd_ce alone": ("full", ["apgd_ce"]),
    "apgd_ce then square, cascade": ("cascade", ["apgd_ce", "square"]),
    "apgd_ce and square, full": ("full", ["apgd_ce", "square"]),
}


def main() -> None:
    args = arguments(__doc__.splitlines()[0], samples=1000)
    base = scenario("linf_0.1")
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    passes: dict[str, float] = {}
    robust: dict[str, float] = {}
    for _ in range(3):
        for name, (evaluation, attacks) in VARIANTS.items():
            data = {**base, "models": base["models"][:1], "defenses": ["none"], "attacks": attacks,
                    "evaluation": evaluation, "dataset": {**base["dataset"], "samples": args.samples}}
            store, run_id = play(data)
            matchups = store.matchups(run_id)
            times[name].append(sum(m.wall_time_s for m in matchups))
            passes[name] = sum(m.passes_per_sample for m in matchups)
            robust[name] = rows(matchups)[0].worst_case
    alone = min(times["apgd_ce alone"])
    lines = ["| attacks | evaluation | attack time, median (min) | vs APGD-CE alone | passes/sample | worst case |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, (evaluation, _) in VARIANTS.items():
        lines.append(f"| {name.split(',')[0]} | {evaluation} | {median_min(times[name])} | "
                     f"{min(times[name]) / alone:.3f} × | {passes[name]:.1f} | {robust[name]:.1%} |")
    lines += ["", f"cnn (linf_0.1 weights), undefended, {args.samples} test images, L∞ ε = 0.1, 3 repeats."]
    write("cascade", "Cascade evaluation: the cost of a second attack on a broken model",
          f"python -m benchmarks.cascade --samples {args.samples}", lines)


if __name__ == "__main__":
    main()
