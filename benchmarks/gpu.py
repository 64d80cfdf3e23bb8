"""The GPU path: the fast suite's and AutoAttack's images per second on the ResNet-18 (undefended and briefly
PGD-trained), in float32 and with bf16 attack gradients, and the robust-accuracy difference bf16 makes.

    bash benchmarks/gpu.sh            # refuses without CUDA; about 5 minutes on one recent GPU
    python -m benchmarks.gpu [--samples 1000] [--epochs 2] [--device cuda]
"""

from __future__ import annotations

import argparse

import torch

from arena.cli import positive
from arena.errors import ArenaError
from arena.leaderboard import rows
from arena.running import resolve_device
from arena.runtime import Runtime
from benchmarks.common import data_dir, play, write


def scenario(args: argparse.Namespace) -> dict:
    """ResNet-18 trained for ``epochs`` (and PGD-trained for as many), attacked by both suites at L∞ 8/255."""
    pgd_at = {"name": "art.madry_pgd", "eps": 8 / 255, "eps_step": 2 / 255, "max_iter": 3, "epochs": args.epochs,
              "label": "pgd_at"}
    dataset = {"name": "cifar10", "split": "test", "samples": args.samples, "train_samples": args.train_samples}
    return {"name": "gpu", "seed": 0, "dataset": dataset,
            "threat_model": {"norm": "linf", "eps": "8/255"},
            "models": [{"name": "resnet18", "train": {"epochs": args.epochs}}], "defenses": ["none", pgd_at],
            "attacks": ["fast", "autoattack"], "batch_size": args.batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=positive, default=1000, help="test images (default: %(default)s)")
    parser.add_argument("--epochs", type=positive, default=2, help="training epochs, plain and PGD (default: 2)")
    parser.add_argument("--batch-size", type=positive, default=1000, help="images per attack batch")
    parser.add_argument("--train-samples", type=positive, default=None, help="training images (default: all)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to try it out")
    args = parser.parse_args()
    try:
        args.device = resolve_device(args.device)
    except ArenaError as exc:
        parser.error(str(exc))
    data_dir()
    results: dict[str, dict] = {}
    for precision in ("fp32", "bf16"):
        store, run_id = play(scenario(args), device=args.device, runtime=Runtime(precision))
        matchups = store.matchups(run_id)
        for row in rows(matchups):
            for suite in ("fast", "autoattack"):
                seconds = sum(m.wall_time_s for m in matchups if m.suite == suite and m.defense == row.defense)
                results[row.defense, suite, precision] = {"robust": row.attacks[suite], "seconds": seconds}
        store.close()
    lines = ["| defense | suite | fp32 images/s | bf16 images/s | fp32 robust | bf16 robust | bf16 − fp32 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for defense in ("none", "pgd_at"):
        for suite in ("fast", "autoattack"):
            fp32, bf16 = results[defense, suite, "fp32"], results[defense, suite, "bf16"]
            lines.append(f"| {defense} | {suite} | {args.samples / fp32['seconds']:.0f} | "
                         f"{args.samples / bf16['seconds']:.0f} | {fp32['robust']:.1%} | {bf16['robust']:.1%} | "
                         f"{100 * (bf16['robust'] - fp32['robust']):+.1f} pts |")
    name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    lines += ["", f"ResNet-18, {args.epochs} training epochs (PGD: as many, 3 steps), {args.samples} CIFAR-10 test "
                  f"images, L∞ 8/255, {name}; images/s = images / the suite's summed matchup time."]
    write("gpu", "The GPU path: images per second, fp32 and bf16",
          f"python -m benchmarks.gpu --samples {args.samples} --epochs {args.epochs} --device {args.device.type}"
          + (f" --train-samples {args.train_samples}" if args.train_samples else ""), lines)


if __name__ == "__main__":
    main()
