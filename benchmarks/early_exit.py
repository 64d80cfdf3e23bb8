"""Early exit against the originals, per sample: torchattacks' PGD vs ``early_pgd`` and pyautoattack's APGD-CE and
APGD-T vs ``early_apgd_ce`` and ``early_apgd_t``, on the same images with the same seed, per model and norm.

    python -m benchmarks.early_exit [--samples 200] [--threads 1] [--models cnn+none,cnn+pgd_at,cnn_lstm+none]

Models: the CNN, the PGD-trained CNN and the CNN-LSTM, all with a short recipe (20,000 training images, 4 epochs,
CNN-LSTM 2; PGD training: the shipped ``pgd_at`` at ε = 0.1 with 3 steps, 4 epochs), trained once and cached.
Writes ``benchmarks/results/early_exit.md`` (``early_exit-<models>.md`` for a subset of the models).
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch
from torch import nn

from arena import Attack, ThreatModel
from arena.cli import positive
from arena.cost import Counted, Passes
from arena.engine import predict
from arena_plugins.apgd import EarlyAPGDCE, EarlyAPGDT, EarlyPGD
from arena_plugins.autoattack import APGDCE, APGDT
from arena_plugins.pgd import PGD
from benchmarks.common import data_dir, networks, write

RECIPE = {"epochs": 4, "batch_size": 64, "lr": 0.001, "optimizer": "adam", "augment": "flip"}
SCENARIO: dict[str, Any] = {
    "name": "early_exit",
    "seed": 0,
    "dataset": {"name": "cifar10", "split": "test", "train_samples": 20000},
    "threat_model": {"norm": "linf", "eps": "8/255"},
    "models": [{"name": "cnn", "train": RECIPE}, {"name": "cnn_lstm", "train": {**RECIPE, "epochs": 2}}],
    "defenses": ["none", {"name": "art.madry_pgd", "eps": 0.1, "max_iter": 3, "epochs": 4, "label": "pgd_at"}],
    "attacks": ["fgsm"],
}
RECIPE_TEXT = ("trained by the arena with a short recipe: the first 20,000 training images, Adam 1e-3, batch 64, "
               "flips, 4 epochs (CNN-LSTM: 2); pgd_at is ART's Madry PGD training at ε = 0.1, 3 steps, 4 epochs.")
#: The (model, defense) pairs measured: the CNN-LSTM is not PGD-trained here, to keep training within budget.
PAIRS = ["cnn+none", "cnn+pgd_at", "cnn_lstm+none"]


THREATS = {"L∞ 8/255": ThreatModel("linf", 8 / 255), "L2 0.5": ThreatModel("l2", 0.5)}
#: Each original and its early-exit version, run with the same parameters (the plugins' defaults) and seed.
PAIRS_OF_ATTACKS = [(PGD, EarlyPGD), (APGDCE, EarlyAPGDCE), (APGDT, EarlyAPGDT)]
BATCH = 100


def attack(cls: type[Attack], net: nn.Module, threat: ThreatModel, images: torch.Tensor, labels: torch.Tensor
           ) -> tuple[torch.Tensor, Passes, float]:
    """Per sample whether ``net`` still classifies the attacked image right, the passes and the wall time; the
    attack's seed and random starts come from the same fixed generator state for every attack."""
    counted = Counted(net).eval()
    torch.manual_seed(0)
    built = cls(counted, threat)
    started = time.perf_counter()
    adversarial = []
    for x in zip(images.split(BATCH), labels.split(BATCH)):
        torch.manual_seed(1)  # PGD's random start (APGD re-seeds itself with its drawn seed)
        adversarial.append(built(*x))
    elapsed = time.perf_counter() - started
    robust = predict(net, torch.cat(adversarial), BATCH, torch.device("cpu")) == labels
    return robust, counted.passes, elapsed


class Float64(nn.Module):
    """``net`` computed in float64: a per-sample result no longer depends on the batch it is computed in."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = copy.deepcopy(net).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.double())


def recheck(original: type[Attack], early: type[Attack], net: nn.Module, threat: ThreatModel, images: torch.Tensor,
            labels: torch.Tensor, odd: torch.Tensor) -> str:
    """The batches holding the ``odd`` samples (APGD: any difference; PGD: robust to ``early`` only) rerun as they
    were with the network in float64: what differs there."""
    batches = sorted({int(i) // BATCH for i in odd.nonzero()})
    index = torch.cat([torch.arange(b * BATCH, min((b + 1) * BATCH, len(images))) for b in batches])
    wide = Float64(net).eval()
    ra, _, _ = attack(original, wide, threat, images[index], labels[index])
    rb, _, _ = attack(early, wide, threat, images[index], labels[index])
    again = (ra != rb) if original is not PGD else (rb & ~ra)
    return (f"the {int(odd.sum())} sample(s) rerun in their batches with the network in float64: {int(again.sum())} "
            f"such sample(s) there, {int((again & odd[index]).sum())} of them the same")


def options() -> argparse.Namespace:
    """The common benchmark options (test images, torch threads) and which of ``PAIRS`` to measure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=positive, default=200, help="test images (default: %(default)s)")
    parser.add_argument("--threads", type=positive, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--models", default=",".join(PAIRS), help="model+defense pairs (default: %(default)s)")
    args = parser.parse_args()
    args.models = args.models.split(",")
    if not set(args.models) <= set(PAIRS):
        parser.error(f"--models: choose among {', '.join(PAIRS)}")
    torch.set_num_threads(args.threads)
    data_dir()
    return args


def main() -> None:
    args = options()
    _, data, nets = networks({**SCENARIO, "dataset": {**SCENARIO["dataset"], "samples": args.samples}}, args.models)
    lines = ["| model | threat | attack | robust (original → early) | differ | unbroken by original | forward "
             "passes/sample (original → early) | backward passes/sample | passes ratio | wall time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    n, notes = len(data.images), []
    for label, net in nets.items():
        clean = float((predict(net, data.images, BATCH, torch.device("cpu")) == data.labels).float().mean())
        for name, threat in THREATS.items():
            for original, early in PAIRS_OF_ATTACKS:
                ra, pa, ta = attack(original, net, threat, data.images, data.labels)
                rb, pb, tb = attack(early, net, threat, data.images, data.labels)
                ratio = (pa.forward + pa.backward) / max(pb.forward + pb.backward, 1)
                lines.append(
                    f"| {label} ({clean:.1%} clean) | {name} | {original.name} → {early.name} | "
                    f"{ra.float().mean():.1%} → {rb.float().mean():.1%} | {int((ra != rb).sum())} | "
                    f"{int((ra & ~rb).sum())} | {pa.forward / n:.1f} → {pb.forward / n:.1f} | "
                    f"{pa.backward / n:.1f} → {pb.backward / n:.1f} | {ratio:.2f} × | {ta:.1f} s → {tb:.1f} s |")
                print(lines[-1], flush=True)
                odd = (ra != rb) if original is not PGD else (rb & ~ra)
                if odd.any():
                    notes.append(f"{label}, {name}, {early.name}: "
                                 + recheck(original, early, net, threat, data.images, data.labels, odd) + ".")
                    print(notes[-1], flush=True)
    lines += ["", f"{n} CIFAR-10 test images, batches of {BATCH}, one thread; each pair on the same images with the "
              "same seed (PGD: 10 steps, step 2.5·ε/10; APGD: 100 iterations, APGD-T 9 target classes). *differ*: "
              "samples robust to one and broken by the other; *unbroken by original*: robust to the original's "
              "returned point, broken by the early-exit one. Models: " + RECIPE_TEXT, "", *notes]
    subset = "" if args.models == PAIRS else f" --models {','.join(args.models)}"
    write("early_exit" + subset.replace(" --models ", "-").replace(",", "-"), "Early exit against the originals, per "
          "sample", f"python -m benchmarks.early_exit --samples {args.samples} --threads {args.threads}{subset}", lines)


if __name__ == "__main__":
    main()
