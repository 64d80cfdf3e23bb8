"""The GPU path: the ``fast`` suite against AutoAttack (standard) on a RobustBench-sized model, per sample, in time
and passes (forward + backward).

    bash benchmarks/gpu.sh            # refuses without CUDA; under 10 minutes on one H100
    python -m benchmarks.gpu [--samples 10000] [--epochs 0] [--precision bf16] [--device cuda]

The model is RobustBench's own WideResNet-28-10 (the architecture of its ``Standard`` CIFAR-10 entry), loaded
through the arena's ``robustbench`` zoo plugin from a checkpoint this script writes (nothing is downloaded):
RobustBench's initialisation, seeded, or with ``--epochs N`` that many epochs of fast FGSM training (Wong et al.
2020, ε 8/255) on the CIFAR-10 training set first, so that samples survive and the survivors' cost shows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from arena.cli import positive
from arena.errors import ArenaError
from arena.leaderboard import worst_case
from arena.running import resolve_device
from arena.runtime import Runtime
from arena_plugins.cifar10 import CIFAR10
from arena_plugins.zoo import robustbench
from benchmarks.common import data_dir, play, write
from benchmarks.suite import passes

EPS = 8 / 255


def checkpoint(folder: Path, epochs: int, device: torch.device) -> float:
    """Write the WideResNet-28-10's weights where RobustBench's ``load_model`` reads ``Standard``; the seconds
    spent training it."""
    robustbench()  # registers the original AutoAttack under the name RobustBench imports
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet

    torch.manual_seed(0)
    net = WideResNet(depth=28, widen_factor=10).to(device)
    started = time.perf_counter()
    if epochs:
        images, labels = CIFAR10().load("train", data_dir())
        steps = epochs * (len(images) // 128)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4, nesterov=True)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.2, total_steps=steps)
        net.train()
        for _ in range(epochs):
            for index in torch.randperm(len(images)).split(128)[: len(images) // 128]:
                x, y = images[index].to(device), labels[index].to(device)
                delta = (torch.rand_like(x) * 2 - 1) * EPS
                delta.requires_grad_()
                with torch.autocast(device.type, torch.bfloat16):
                    (grad,) = torch.autograd.grad(F.cross_entropy(net((x + delta).clamp(0, 1)), y), delta)
                delta = (delta + 1.25 * EPS * grad.sign()).clamp(-EPS, EPS).detach()
                with torch.autocast(device.type, torch.bfloat16):
                    loss = F.cross_entropy(net((x + delta).clamp(0, 1)), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    path = folder / "cifar10" / "Linf" / "Standard.pt"
    path.parent.mkdir(parents=True)
    torch.save(net.eval().state_dict(), path)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=positive, default=10_000, help="test images (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=0, help="fast FGSM training epochs first (default: 0)")
    parser.add_argument("--batch-size", type=positive, default=1000, help="images per attack batch")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16", help="attack gradients")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to try it out")
    args = parser.parse_args()
    try:
        args.device = resolve_device(args.device)
    except ArenaError as exc:
        parser.error(str(exc))
    if args.epochs < 0:
        parser.error("--epochs must be ≥ 0")
    folder = Path(tempfile.mkdtemp(prefix="arena-gpu-"))
    trained = checkpoint(folder / "models", args.epochs, args.device)
    zoo = {"name": "robustbench", "model": "Standard", "model_dir": str(folder / "models")}
    scenario = {"name": "gpu", "seed": 0, "threat_model": {"norm": "linf", "eps": "8/255"},
                "dataset": {"name": "cifar10", "split": "test", "samples": args.samples},
                "models": [zoo], "defenses": ["none"], "attacks": ["fast", "autoattack"],
                "batch_size": args.batch_size}
    store, run_id = play(scenario, device=args.device, runtime=Runtime(args.precision))
    matchups = store.matchups(run_id)
    lines = ["| suite | robust | passes per sample | seconds | images/s |", "| --- | --- | --- | --- | --- |"]
    cost: dict[str, tuple[float, float]] = {}
    for suite in ("fast", "autoattack"):
        members = [m for m in matchups if m.suite == suite]
        robust = worst_case(members)
        cost_per_sample = passes(members)
        seconds = sum(m.wall_time_s for m in members)
        cost[suite] = cost_per_sample, seconds
        lines.append(f"| {suite} | {robust.mean():.1%} | {cost_per_sample:.0f} | {seconds:.0f} | "
                     f"{args.samples / seconds:.0f} |")
    (fast_passes, fast_s), (aa_passes, aa_s) = cost["fast"], cost["autoattack"]
    name = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "CPU"
    lines += ["", f"AutoAttack / fast: {aa_passes / max(fast_passes, 1e-9):.1f}× the passes, "
                  f"{aa_s / max(fast_s, 1e-9):.1f}× the time. Clean accuracy {matchups[0].clean_accuracy:.1%}.",
              f"RobustBench's WideResNet-28-10, {args.epochs} epoch(s) of fast FGSM training ({trained:.0f} s), "
              f"{args.samples} CIFAR-10 test images, L∞ 8/255, {args.precision} attack gradients, {name}."]
    store.close()
    write("gpu", "The GPU path: fast against AutoAttack on a WideResNet-28-10",
          f"python -m benchmarks.gpu --samples {args.samples} --epochs {args.epochs} --precision {args.precision} "
          f"--device {args.device.type}", lines)


if __name__ == "__main__":
    main()
