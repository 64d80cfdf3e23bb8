"""The ``fast`` suite against AutoAttack (``standard``; ``rand`` on the randomized defense) on the same samples, per
sample: robust accuracy of each, samples robust to one but not the other, passes per sample, their ratio, wall time,
and what each AutoAttack member added beyond the one before it (what skipping it would have cost).

    python -m benchmarks.suite [--samples 1000] [--models cnn,cnn_pgd_at,...] [--threats linf:8/255,linf:0.1,l2:0.5]
                               [--l2-models cnn,cnn_pgd_at] [--recipe full|short] [--targets 3] [--threads 1]
                               [--results DIR]

Models are ``scenarios/autoattack.yaml``'s (the ``linf_0.1`` weights, reused from the cache) plus the ResNet-18;
``--recipe short`` trains every model but the two robust ones (``cnn_robust``, ``cnn_lstm_robust``: PGD training at
8/255 for 10 epochs on all 50,000 images, always) for 2 epochs on 5,000 images (training-time defenses: 1 epoch) to fit
a small CPU. The robust models are played only at L∞ 8/255, the threat they were trained for; ``--l2-models`` says which
models also play at L2. ``--results DIR`` plays into that store and reuses every matchup already there under the same
key (same weights, images, seed, attack and the members before it): rerun after a change to the ``fast`` suite, only its
changed members are computed again, AutoAttack's are reused (the table marks reused wall times).
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arena.leaderboard import worst_case
from arena.records import Matchup
from benchmarks.common import data_dir, play, scenario, write

TRAIN = {"epochs": 10, "batch_size": 64, "lr": 0.001, "optimizer": "adam", "augment": "flip"}
PGD_AT = {"name": "art.madry_pgd", "eps": 0.1, "max_iter": 3, "epochs": 5, "label": "pgd_at"}
#: The robust models' recipe: Madry PGD training at the benchmark's own budget, L∞ 8/255 (3 steps of 2.5 ε / 3,
#: a random start), 10 epochs on all 50,000 training images; batches of 128 keep a CPU epoch near six minutes.
ROBUST_TRAIN = {**TRAIN, "batch_size": 128}
ROBUST_AT = {"name": "art.madry_pgd", "eps": 8 / 255, "max_iter": 3, "epochs": 10, "label": "pgd_at_8"}
#: Each benchmarked model: (architecture, defense entry, AutoAttack version, training recipe).
MODELS: dict[str, tuple[str, Any, str, dict[str, Any]]] = {
    "cnn": ("cnn", "none", "standard", TRAIN),
    "cnn_pgd_at": ("cnn", PGD_AT, "standard", TRAIN),
    "cnn_fast_fgsm_at": ("cnn", {"name": "art.fbf", "eps": 0.1, "epochs": 5, "label": "fast_fgsm_at"}, "standard",
                         TRAIN),
    "cnn_lstm_pgd_at": ("cnn_lstm", PGD_AT, "standard", TRAIN),
    "cnn_jpeg": ("cnn", {"name": "art.jpeg", "quality": 50, "label": "jpeg"}, "standard", TRAIN),
    "cnn_noise": ("cnn", {"name": "art.gaussian_noise", "label": "noise"}, "rand", TRAIN),
    "resnet18": ("resnet18", "none", "standard", TRAIN),
    "cnn_robust": ("cnn", ROBUST_AT, "standard", ROBUST_TRAIN),
    "cnn_lstm_robust": ("cnn_lstm", ROBUST_AT, "standard", ROBUST_TRAIN),
}
#: A³'s published pass ratio (Liu et al., CVPR 2022, its README: AutoAttack 48.0 M forward + 11.9 M backward passes
#: against A³'s 4.14 M + 2.04 M on RobustBench's Rebuffi WRN-28-10, 10,000 CIFAR-10 images), printed beside ours.
A3_RATIO = (48.0 + 11.9) / (4.14 + 2.04)
SHORT = {"train": {"epochs": 2}, "train_samples": 5_000, "defense_epochs": 1}


def adversarially_trained_model(key: str) -> bool:
    """Whether a benchmarked model's defense is adversarial training (Madry PGD or fast FGSM)."""
    defense = MODELS[key][1]
    return isinstance(defense, dict) and defense["name"] in ("art.madry_pgd", "art.fbf")


def threat(text: str) -> tuple[str, str | float]:
    """``linf:8/255`` → (``linf``, ``8/255``) and ``linf:0.1`` → (``linf``, 0.1), as a scenario writes them."""
    norm, _, eps = text.partition(":")
    if norm not in ("linf", "l2") or not eps:
        raise argparse.ArgumentTypeError(f"{text!r}: write NORM:EPS, e.g. linf:8/255 or l2:0.5")
    try:
        positive = Fraction(eps) > 0
    except (ValueError, ZeroDivisionError):
        positive = False
    if not positive:
        raise argparse.ArgumentTypeError(f"{text!r}: EPS is a positive number or fraction, such as 0.1 or 8/255")
    return (norm, eps) if "/" in eps else (norm, float(eps))


def names(text: str) -> list[str]:
    """``cnn,resnet18`` → the benchmarked models it names, each checked."""
    chosen = [n for n in text.split(",") if n]
    unknown = [n for n in chosen if n not in MODELS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    return chosen


def row(text: str) -> tuple[str, str, str | float]:
    """``cnn_jpeg:linf:8/255`` → (``cnn_jpeg``, ``linf``, ``8/255``): one row of the table, as ``--row`` takes it."""
    key, _, rest = text.partition(":")
    if key not in MODELS:
        raise argparse.ArgumentTypeError(f"{text!r}: write MODEL:NORM:EPS with MODEL one of {', '.join(MODELS)}")
    try:
        return (key, *threat(rest))
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: write MODEL:NORM:EPS, e.g. cnn_jpeg:linf:8/255 ({error})"
                                         ) from None


def row_scenario(text: str, samples: int) -> dict[str, Any]:
    """One row's scenario (``MODEL:NORM:EPS``) as the table plays it: the short recipe, the fast suite's defaults."""
    options = argparse.Namespace(samples=samples, recipe="short", targets=3, probe_queries=100)
    return pair_scenario(*row(text), options)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="test images (default: %(default)s)")
    parser.add_argument("--models", type=names, default=list(MODELS), help="comma-separated subset of the models")
    parser.add_argument("--threats", type=lambda t: [threat(x) for x in t.split(",")],
                        default=[("linf", "8/255"), ("linf", 0.1), ("l2", 0.5)], help="NORM:EPS, comma-separated")
    parser.add_argument("--l2-models", type=names, default=["cnn", "cnn_pgd_at"], help="models also run at L2")
    parser.add_argument("--recipe", choices=("full", "short"), default="full", help="training recipe")
    parser.add_argument("--targets", type=int, default=3, help="the fast suite's APGD-T target classes")
    parser.add_argument("--probe-queries", type=int, default=100, help="the fast suite's Square probe queries")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--results", type=Path, help="results store to play into, reusing the matchups it holds")
    args = parser.parse_args()
    if args.samples < 1 or args.threads < 1 or not 1 <= args.targets <= 9 or args.probe_queries < 1:
        parser.error("--samples, --threads and --probe-queries must be ≥ 1, --targets in 1..9")
    torch.set_num_threads(args.threads)
    data_dir()
    return args


def rows(norm: str, eps: str | float, args: argparse.Namespace) -> list[str]:
    """The chosen models played under one threat: at L2 only ``--l2-models``; the robust models only at the threat
    they were trained for (L∞ 8/255), the one their robustness is claimed at."""
    chosen = [k for k in args.models if norm != "l2" or k in args.l2_models]
    return [k for k in chosen if MODELS[k][3] is not ROBUST_TRAIN or (norm, eps) == ("linf", "8/255")]


def pair_scenario(key: str, norm: str, eps: str | float, args: argparse.Namespace) -> dict[str, Any]:
    """One model under one threat model, attacked by both suites (each cascades within itself)."""
    architecture, defense, version, train = MODELS[key]
    base = scenario("autoattack")
    model: dict[str, Any] = {"name": architecture} if architecture == "resnet18" else {"name": architecture,
                                                                                      "train": dict(train)}
    dataset = {**base["dataset"], "samples": args.samples}
    if args.recipe == "short" and train is not ROBUST_TRAIN:  # the robust models are there to be trained in full
        model["train"] = {**model.get("train", {}), **SHORT["train"]}
        dataset["train_samples"] = SHORT["train_samples"]
        if isinstance(defense, dict) and "epochs" in defense:
            defense = {**defense, "epochs": SHORT["defense_epochs"]}
    fast = {"name": "fast", "targets": args.targets, "probe_queries": args.probe_queries}
    return {**base, "name": f"suite-{key}", "dataset": dataset, "threat_model": {"norm": norm, "eps": eps},
            "models": [model], "defenses": [defense], "attacks": [fast, {"name": "autoattack", "version": version}]}


def robust(members: list[Matchup]) -> np.ndarray:
    return worst_case(members)


def passes(members: list[Matchup]) -> float:
    return sum(m.passes_per_sample or 0.0 for m in members)


def seconds(members: list[Matchup]) -> str:
    """The members' wall time, marked when any of it was measured by an earlier run whose matchups were reused."""
    reused = " (reused)" if any(m.reused_from for m in members) else ""
    return f"{sum(m.wall_time_s for m in members):.0f} s{reused}"


def outside(members: list[Matchup]) -> str:
    """Time the members spent outside the attack's own calls (checks, judging, auditing, storing), as a share of
    the time inside them (a member with no sample left to attack made no call); ``n/a`` when a member's attack time
    was not recorded (a result stored before it was)."""
    ok = [m for m in members if m.status == "ok"]
    timed = [m for m in ok if m.attack_time_s is not None or not (m.attacked_mask is None or m.attacked_mask.any())]
    inside = sum(m.attack_time_s or 0.0 for m in timed)
    if len(timed) < len(ok) or not inside:
        return "n/a"
    return f"{sum(m.wall_time_s for m in timed) / inside - 1:.0%}"


def added(m: Matchup) -> str:
    """What one member broke beyond the members before it, and its passes per sample (or why it did not run)."""
    if m.status != "ok":
        return m.status
    return f"{int((m.attacked_mask & ~m.robust_correct).sum())} ({m.passes_per_sample:.0f} p/s)"


def main() -> None:
    args = arguments()
    lines = ["| threat | model | clean | fast | AutoAttack | Δ | robust to fast only | robust to AA only | "
             "fast passes/sample | AA passes/sample | AA / fast | fast time | AA time | AA / fast time | "
             "outside the attack: fast · AA |",
             "|" + " --- |" * 15]
    design = ["| threat | model | fast: APGD-CE · APGD-T · probe · FAB-T (1 target) · Square | "
              "AutoAttack: APGD-CE · APGD-T · FAB-T · Square (or APGD-DLR) |", "| --- | --- | --- | --- |"]
    robust_samples = {"fast": 0, "autoattack": 0}
    played: dict[str, list[Matchup]] = {"fast": [], "autoattack": []}  # every row's members, for the totals
    adversarially_trained = []
    started = time.perf_counter()
    for norm, eps in args.threats:
        for key in rows(norm, eps, args):
            store, run_id = play(pair_scenario(key, norm, eps, args), results=args.results,
                                 fresh=args.results is None)
            matchups = store.matchups(run_id)
            suites = {s: [m for m in matchups if m.suite == s] for s in ("fast", "autoattack")}
            masks = {s: robust(ms) for s, ms in suites.items()}
            cost = {s: passes(ms) for s, ms in suites.items()}
            took = {s: sum(m.wall_time_s for m in ms) for s, ms in suites.items()}
            for s in played:
                robust_samples[s] += int(masks[s].sum())
                played[s] += suites[s]
            ratio = cost["autoattack"] / cost["fast"] if cost["fast"] else float("inf")
            time_ratio = took["autoattack"] / took["fast"] if took["fast"] else float("inf")
            if adversarially_trained_model(key):
                adversarially_trained.append((f"{key} {norm} {eps}", ratio, time_ratio))
            a, b = masks["fast"].mean(), masks["autoattack"].mean()
            lines.append(
                f"| {norm} {eps} | {key} | {matchups[0].clean_accuracy:.1%} | {a:.1%} | {b:.1%} | "
                f"{100 * (a - b):+.1f} pts | {int((masks['fast'] & ~masks['autoattack']).sum())} | "
                f"{int((masks['autoattack'] & ~masks['fast']).sum())} | {cost['fast']:.0f} | "
                f"{cost['autoattack']:.0f} | {ratio:.1f}× | {seconds(suites['fast'])} | "
                f"{seconds(suites['autoattack'])} | {time_ratio:.1f}× | {outside(suites['fast'])} · "
                f"{outside(suites['autoattack'])} |")
            design.append(f"| {norm} {eps} | {key} | {' · '.join(added(m) for m in suites['fast'])} | "
                          f"{' · '.join(added(m) for m in suites['autoattack'])} |")
            store.close()
    n = sum(len(rows(norm, eps, args)) for norm, eps in args.threats) * args.samples
    fast, auto = ([robust_samples[s], passes(played[s]) * args.samples, sum(m.wall_time_s for m in played[s])]
                  for s in ("fast", "autoattack"))
    lines += ["", f"Over all {n} sample evaluations: fast {fast[0] / n:.2%} robust, AutoAttack {auto[0] / n:.2%} "
                  f"({100 * (fast[0] - auto[0]) / n:+.2f} pts); passes per sample {fast[1] / n:.0f} vs "
                  f"{auto[1] / n:.0f} ({auto[1] / max(fast[1], 1):.1f}× fewer; A³ publishes {A3_RATIO:.1f}×); "
                  f"time {fast[2]:.0f} s vs "
                  f"{auto[2]:.0f} s ({auto[2] / max(fast[2], 1e-9):.1f}× less); outside the attack "
                  f"{outside(played['fast'])} · {outside(played['autoattack'])}."]
    if adversarially_trained:
        lines.append("Adversarially trained, AA / fast passes (and time): "
                     + ", ".join(f"{name} {ratio:.1f}× ({took:.1f}×)" for name, ratio, took in adversarially_trained)
                     + ".")
    lines += ["", "What each member broke beyond the ones before it (samples, and its passes per sample); "
                  "`skipped`: its conditions did not hold:", "", *design, "",
              f"{args.samples} CIFAR-10 test images, recipe `{args.recipe}`, fast suite targets={args.targets}, "
              f"probe_queries={args.probe_queries}; {torch.get_num_threads()} torch thread(s), CPU; "
              f"whole benchmark {time.perf_counter() - started:.0f} s including training."]
    write("suite", "The fast suite against AutoAttack, per sample", command(args), lines)


def command(args: argparse.Namespace) -> str:
    """The command that reproduces a run, with only the options that had an effect (``--l2-models`` only with an L2
    threat)."""
    l2 = f" --l2-models {','.join(args.l2_models)}" if any(norm == "l2" for norm, _ in args.threats) else ""
    stored = f" --results {args.results}" if args.results else ""
    return (f"python -m benchmarks.suite --samples {args.samples} --models {','.join(args.models)} --threats "
            f"{','.join(f'{a}:{b}' for a, b in args.threats)}{l2} --recipe {args.recipe} --targets {args.targets} "
            f"--probe-queries {args.probe_queries} --threads {args.threads}{stored}")


if __name__ == "__main__":
    main()
