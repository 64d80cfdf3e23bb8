"""The speed suite behind ``python -m benchmarks`` (see ``benchmarks/__main__.py``).

Every comparison runs the two sides on the same model, images and device, alternating them ``--repeats`` times, and
reports the median and the minimum. A ratio is ``bare time / arena time`` on the minima: 1.00 means the arena costs
nothing over the library it wraps, 0.95 is the bar below which a gap counts as a defect to explain.
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchattacks
from pyautoattack.autopgd_base import APGDAttack
from pyautoattack.square import SquareAttack

import arena
from arena.checks import PROBE_SAMPLES, probe
from arena.cost import Counted
from arena_plugins.art_defenses import MadryPGD
from arena_plugins.cifar10 import CIFAR10
from arena_plugins.models import CNN
from benchmarks.common import RESULTS, data_dir

EPS = 0.1


@dataclass
class Sizes:
    """How much work each section does: ``--quick`` runs the whole suite in about 6 minutes on a 2-core CPU."""

    train: int
    art_train: int
    samples: int
    apgd_iter: int
    square_queries: int
    scale_samples: tuple[int, ...]
    scale_steps: tuple[int, ...]


QUICK = Sizes(train=10_000, art_train=2_000, samples=500, apgd_iter=100, square_queries=500,
              scale_samples=(250, 500, 1000, 2000), scale_steps=(10, 20, 40))
FULL = Sizes(train=50_000, art_train=10_000, samples=1000, apgd_iter=100, square_queries=5000,
             scale_samples=(500, 1000, 2000, 4000), scale_steps=(10, 20, 40))


@dataclass
class Report:
    """The suite's tables, as Markdown lines, and the scaling points for the plot."""

    device: torch.device
    lines: list[str] = field(default_factory=list)
    scaling: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def table(self, title: str, header: list[str], rows: list[list[str]], note: str = "") -> None:
        self.lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        self.lines += ["| " + " | ".join(row) + " |" for row in rows]
        self.lines += ["", note, ""] if note else [""]
        print("\n".join(self.lines[-(len(rows) + 5):]), flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, work: Callable[..., Any], *args: Any) -> float:
    """Wall seconds of ``work(*args)``, the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    work(*args)
    sync(device)
    return time.perf_counter() - start


def cell(values: list[float]) -> str:
    """``median (min)`` seconds."""
    return f"{statistics.median(values):.2f} ({min(values):.2f})"


def ratio(bare: list[float], ours: list[float]) -> str:
    return f"{min(bare) / min(ours):.2f}"


def batches(images: torch.Tensor, labels: torch.Tensor, size: int, device: torch.device):
    for start in range(0, len(images), size):
        yield images[start:start + size].to(device), labels[start:start + size].to(device)


def floor(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, passes: int, device: torch.device,
          size: int = 500) -> None:
    """``passes`` forward+backward passes to the input on every image: what any k-step gradient attack must pay."""
    for x, y in batches(images, labels, size, device):
        x = x.clone().requires_grad_(True)
        for _ in range(passes):
            torch.autograd.grad(F.cross_entropy(model(x), y), x)


# --- training ---------------------------------------------------------------------------------------------------

def bare_epoch(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, seed: int,
               device: torch.device) -> None:
    """The seed recipe's epoch written out as a plain PyTorch loop (Adam 1e-3, batch 64, seeded shuffle and flips)."""
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for index in torch.randperm(len(images), generator=generator).split(64):
        x, y = images[index], labels[index]
        flip = torch.rand(len(index), generator=generator) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()


def training(report: Report, sizes: Sizes, repeats: int, x_train: torch.Tensor, y_train: torch.Tensor,
             ) -> tuple[torch.nn.Module, torch.nn.Module]:
    """One epoch through ``arena.Trainer`` vs the bare loop; ART's Madry PGD trainer through the arena's plugin vs ART
    called directly. Returns the trained CNN and the PGD-trained one, for the sections after."""
    device = report.device
    torch.manual_seed(0)
    initial = CNN(normalize=True).build(10)
    x, y = x_train[:sizes.train], y_train[:sizes.train]
    trainer = arena.Trainer(arena.TrainConfig(epochs=1), 0, device, 10, progress=False)
    times: dict[str, list[float]] = {"arena": [], "bare": []}
    for _ in range(repeats):
        ours, bare = copy.deepcopy(initial), copy.deepcopy(initial)
        times["arena"].append(timed(device, trainer.fit, ours, x, y))
        times["bare"].append(timed(device, bare_epoch, bare, x, y, 0, device))
    same = all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), bare.state_dict().values()))
    trained = ours
    rows = [["1 epoch, seed recipe", f"{len(x):,}", cell(times["arena"]), cell(times["bare"]),
             ratio(times["bare"], times["arena"]), "identical" if same else "differ"]]

    xa, ya = x_train[:sizes.art_train], y_train[:sizes.art_train]
    madry = MadryPGD(eps=EPS, eps_step=None, max_iter=3, num_random_init=1, epochs=1)
    art_times: dict[str, list[float]] = {"arena": [], "bare": []}
    for _ in range(repeats):
        ours, bare = copy.deepcopy(initial), copy.deepcopy(initial)
        art_times["arena"].append(timed(device, madry.train, ours, xa, ya, trainer))
        art_times["bare"].append(timed(device, art_madry, bare, xa, ya, device))
    rows.append(["ART Madry PGD-3, 1 epoch", f"{len(xa):,}", cell(art_times["arena"]), cell(art_times["bare"]),
                 ratio(art_times["bare"], art_times["arena"]), "–"])
    report.table("Training", ["what", "images", "arena s, median (min)", "bare s", "bare/arena", "weights"], rows,
                 "Bare: the same recipe as a plain PyTorch loop; for ART, `AdversarialTrainerMadryPGD` built and "
                 "fitted directly. Weights compare the arena's epoch with the bare loop's, bit for bit.")
    return trained, ours


def art_madry(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
    from art.defences.trainer import AdversarialTrainerMadryPGD
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(model=model.to(device), loss=torch.nn.CrossEntropyLoss(),
                                   optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), input_shape=(3, 32, 32),
                                   nb_classes=10, clip_values=(0.0, 1.0),
                                   device_type="gpu" if device.type == "cuda" else "cpu")
    trainer = AdversarialTrainerMadryPGD(classifier, eps=EPS, eps_step=2.5 * EPS / 3, max_iter=3, num_random_init=1)
    trainer.attack.set_params(batch_size=64)
    trainer.fit(x.numpy(), np.eye(10, dtype=np.float32)[y.numpy()], nb_epochs=1, batch_size=64)
    model.eval()


# --- attacks ----------------------------------------------------------------------------------------------------

def attack_entries(sizes: Sizes) -> dict[str, dict[str, Any]]:
    return {
        "fgsm": {"name": "fgsm"},
        "pgd": {"name": "pgd", "steps": 10},
        "apgd_ce": {"name": "apgd_ce", "n_iter": sizes.apgd_iter},
        "square": {"name": "square", "n_queries": sizes.square_queries},
    }


def bare_attack(name: str, model: torch.nn.Module, sizes: Sizes) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    """The library call the arena's plugin wraps, with the same parameters."""
    if name == "fgsm":
        return torchattacks.FGSM(model, eps=EPS)
    if name == "pgd":
        return torchattacks.PGD(model, eps=EPS, alpha=2.5 * EPS / 10, steps=10, random_start=True)
    if name == "apgd_ce":
        return APGDAttack(model, n_iter=sizes.apgd_iter, norm="Linf", n_restarts=1, eps=EPS, seed=0, loss="ce",
                          eot_iter=1, rho=0.75).perturb
    return SquareAttack(model, norm="Linf", n_queries=sizes.square_queries, eps=EPS, p_init=0.8, n_restarts=1, seed=0,
                        resc_schedule=False).perturb


def fixed_checks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, leak: torch.Tensor | None,
                 leak_labels: torch.Tensor | None, device: torch.device) -> None:
    """The work a matchup does besides the attack itself: the probe of ``arena.checks`` (5 forward passes and a
    gradient on up to 100 samples), one judging forward pass per attacked sample, and for a single-step attack the
    label-leak pass (bare FGSM on the misclassified samples, ``leak``)."""
    probe(model, model, x[:PROBE_SAMPLES].to(device), y[:PROBE_SAMPLES].to(device))
    with torch.no_grad():
        for xb, _ in batches(x, y, 500, device):
            model(xb)
    if leak is not None:
        run_bare(torchattacks.FGSM(model, eps=EPS), leak, leak_labels, device)


def run_bare(call: Callable[[torch.Tensor, torch.Tensor], Any], images: torch.Tensor, labels: torch.Tensor,
             device: torch.device) -> None:
    for x, y in batches(images, labels, 500, device):
        call(x, y)


def attacks(report: Report, sizes: Sizes, repeats: int, model: torch.nn.Module, images: torch.Tensor,
            labels: torch.Tensor) -> None:
    """Each attack as an arena matchup (``arena.evaluate``: audit, checks, pass counting included) vs the bare
    library call on the samples the arena attacked (the initially-correct ones) vs the floor."""
    device, entries = report.device, attack_entries(sizes)
    threat = arena.ThreatModel("linf", EPS)
    ours: dict[str, list[float]] = {name: [] for name in entries}
    bare: dict[str, list[float]] = {name: [] for name in entries}
    floors: dict[str, list[float]] = {name: [] for name in entries}
    passes: dict[str, float] = {}
    bare_passes: dict[str, float] = {}
    checks: dict[str, list[float]] = {name: [] for name in entries}
    for _ in range(repeats):
        result = arena.evaluate(model, images, labels, attacks=list(entries.values()), threat=threat, device=device)
        correct = torch.from_numpy(result.clean_correct)
        x, y = images[correct], labels[correct]
        for m in result.matchups:
            ours[m.attack].append(m.wall_time_s)
            passes[m.attack] = (m.forward_passes + m.backward_passes) / max(int(correct.sum()), 1)
        for name in entries:
            if name not in bare_passes:  # counted once, untimed: the library's own passes per attacked sample
                counted = Counted(model).eval()  # torchattacks restores the mode it found: keep it eval
                run_bare(bare_attack(name, counted, sizes), x, y, device)
                bare_passes[name] = (counted.passes.forward + counted.passes.backward) / max(len(x), 1)
            bare[name].append(timed(device, run_bare, bare_attack(name, model, sizes), x, y, device))
            leak = (images[~correct], labels[~correct]) if name == "fgsm" else (None, None)
            checks[name].append(timed(device, fixed_checks, model, x, y, *leak, device))
            steps = {"fgsm": 1, "pgd": 10, "apgd_ce": sizes.apgd_iter}.get(name)
            if steps:
                floors[name].append(timed(device, floor, model, x, y, steps, device))
    rows = []
    for name in entries:
        floor_cell = cell(floors[name]) if floors[name] else "–"
        floor_ratio = ratio(floors[name], ours[name]) if floors[name] else "–"
        rows.append([name, f"{int(correct.sum())}", cell(ours[name]), cell(bare[name]), ratio(bare[name], ours[name]),
                     floor_cell, floor_ratio, f"{passes[name]:.1f} / {bare_passes[name]:.1f}",
                     f"{bare_passes[name] / passes[name]:.2f}", cell(checks[name]),
                     f"{min(bare[name]) / (min(ours[name]) - min(checks[name])):.2f}"])
    report.table("Attacks", ["attack", "samples attacked", "arena s, median (min)", "bare library s", "bare/arena",
                             "floor s", "floor/arena", "passes per attacked sample, arena / bare",
                             "passes bare/arena", "fixed checks s", "bare/(arena − checks)"], rows,
                 f"L∞ ε = {EPS}, {len(images)} test images, batch 500. Bare: torchattacks (FGSM, PGD) or pyautoattack "
                 "(APGD-CE, Square) called directly on the same initially-correct samples. Floor: k forward+backward "
                 "passes to the input for a k-step gradient attack (none for Square, a query search). The arena's "
                 "matchup also probes the model (5 forward passes and a gradient on the first batch), audits and "
                 "judges every adversarial batch, and for a single-step attack outside a cascade runs it on the "
                 "misclassified samples too (the label-leak check). Those fixed checks are timed on their own, "
                 "with the bare model: the last column is the bare library against the arena without them.")


# --- defenses, cascade, scaling ----------------------------------------------------------------------------------

def defenses(report: Report, repeats: int, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """PGD-10 through each inference-time defense vs through the bare network: the price of each stage."""
    threat = arena.ThreatModel("linf", EPS)
    chains = {"none": ["none"], "art.jpeg (BPDA)": ["art.jpeg"],
              "art.gaussian_noise (EOT 10)": [{"name": "art.gaussian_noise", "sigma": 0.05}]}
    times: dict[str, list[float]] = {name: [] for name in chains}
    passes: dict[str, float] = {}
    for _ in range(repeats):
        for name, chain in chains.items():
            result = arena.evaluate(model, images, labels, attacks=[{"name": "pgd", "steps": 10}], threat=threat,
                                    defenses=chain, device=report.device)
            (m,) = result.matchups
            times[name].append(m.wall_time_s)
            passes[name] = (m.forward_passes + m.backward_passes) / max(int(result.clean_correct.sum()), 1)
    rows = [[name, cell(times[name]), f"{min(times[name]) / min(times['none']):.2f} ×", f"{passes[name]:.1f}"]
            for name in chains]
    report.table("Defenses", ["defense", "PGD-10 matchup s, median (min)", "vs undefended",
                              "passes per attacked sample"], rows,
                 "ART's JPEG runs in NumPy on the CPU (one round trip per step, on a GPU too); EOT multiplies the "
                 "gradient passes by its draws.")


def cascade(report: Report, sizes: Sizes, repeats: int, models: dict[str, torch.nn.Module], images: torch.Tensor,
            labels: torch.Tensor) -> None:
    """APGD-CE then Square: cascade (Square only where APGD-CE failed) vs full (Square on every correct sample)."""
    threat = arena.ThreatModel("linf", EPS)
    entries = [{"name": "apgd_ce", "n_iter": sizes.apgd_iter}, {"name": "square", "n_queries": sizes.square_queries}]
    rows = []
    for model_name, model in models.items():
        times: dict[str, list[float]] = {"cascade": [], "full": []}
        worst: dict[str, float] = {}
        for _ in range(repeats):
            for mode in times:
                result = arena.evaluate(model, images, labels, attacks=entries, threat=threat, evaluation=mode,
                                        device=report.device)
                times[mode].append(sum(m.wall_time_s for m in result.matchups))
                worst[mode] = result.worst_case
        rows.append([model_name, cell(times["cascade"]), cell(times["full"]),
                     f"{min(times['cascade']) / min(times['full']):.2f} ×",
                     f"{worst['cascade']:.1%} / {worst['full']:.1%}"])
    report.table("Cascade vs full evaluation", ["model", "cascade s, median (min)", "full s", "cascade/full",
                                                "worst case cascade / full"], rows,
                 "The worst case is the same by construction; the cascade only saves work.")


def runtimes(report: Report, sizes: Sizes, repeats: int, model: torch.nn.Module, images: torch.Tensor,
             labels: torch.Tensor) -> None:
    """The opt-in settings (``--precision bf16``, ``--channels-last``, ``--compile``) on PGD-10 and APGD-CE: time, and
    the robust accuracy each gives (bf16 changes the attack's gradients, never the float32 judging)."""
    threat = arena.ThreatModel("linf", EPS)
    entries = [{"name": "pgd", "steps": 10}, {"name": "apgd_ce", "n_iter": sizes.apgd_iter}]
    settings = {"float32 (reference)": arena.Runtime(), "bf16": arena.Runtime(precision="bf16"),
                "channels-last": arena.Runtime(channels_last=True), "compile": arena.Runtime(compile=True)}
    times: dict[str, list[float]] = {name: [] for name in settings}
    robust: dict[str, dict[str, float]] = {}
    for _ in range(repeats):
        for name, runtime in settings.items():
            result = arena.evaluate(model, images, labels, attacks=entries, threat=threat, device=report.device,
                                    runtime=runtime)
            times[name].append(sum(m.wall_time_s for m in result.matchups))
            robust[name] = {m.attack: m.robust_accuracy for m in result.matchups}
    reference = "float32 (reference)"
    rows = [[name, cell(times[name]), f"{min(times[reference]) / min(times[name]):.2f}",
             " / ".join(f"{robust[name][a]:.1%} ({robust[name][a] - robust[reference][a]:+.1%})" for a in robust[name])]
            for name in settings]
    report.table("Runtime settings (PGD-10 + APGD-CE)", ["setting", "s, median (min)", "speed-up",
                                                          "robust accuracy PGD / APGD-CE (vs float32)"], rows,
                 "Each evaluation builds its networks afresh, so compile's time includes compiling (tens of "
                 "seconds on a CPU, less once torch's on-disk cache is warm): it pays off only on long runs.")


def fit(points: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Least-squares line ``t = a + b·x`` and the log-log slope (1.00: time proportional to ``x``)."""
    x, t = np.array(points).T
    b, a = np.polyfit(x, t, 1)
    exponent = np.polyfit(np.log(x), np.log(t), 1)[0]
    return float(a), float(b), float(exponent)


def scaling(report: Report, sizes: Sizes, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """PGD matchup time against attacked samples (10 steps) and against steps (at the second sample size)."""
    threat = arena.ThreatModel("linf", EPS)
    runs = {"samples": [(n, 10) for n in sizes.scale_samples], "steps": [(sizes.scale_samples[1], k)
                                                                          for k in sizes.scale_steps]}
    rows = []
    for axis, settings in runs.items():
        points = []
        for n, steps in settings:
            result = arena.evaluate(model, images[:n], labels[:n], attacks=[{"name": "pgd", "steps": steps}],
                                    threat=threat, device=report.device)
            (m,) = result.matchups
            attacked = int(result.clean_correct.sum())
            points.append((attacked if axis == "samples" else steps, m.wall_time_s))
        a, b, exponent = fit(points)
        report.scaling[axis] = points
        unit = "s per attacked sample" if axis == "samples" else "s per step"
        rows.append([axis, ", ".join(f"{x:g}: {t:.2f} s" for x, t in points), f"{b:.4g} {unit}", f"{a:.2f} s",
                     f"{exponent:.2f}"])
    report.table("Scaling (PGD matchup)", ["against", "points", "slope", "intercept", "log-log exponent"], rows,
                 "Time is linear when the log-log exponent is near 1 and the intercept small against the points.")


def plot(report: Report, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report.scaling), figsize=(5 * len(report.scaling), 3.5), squeeze=False)
    for ax, (axis, points) in zip(axes[0], report.scaling.items()):
        x, t = np.array(points).T
        a, b, _ = fit(points)
        ax.plot(x, t, "o", label="measured")
        ax.plot(x, a + b * x, "-", label=f"fit: {a:.2f} + {b:.3g}·x")
        ax.set_xlabel("attacked samples" if axis == "samples" else "PGD steps")
        ax.set_ylabel("matchup seconds")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="The arena's speed against the bare libraries and the floor.")
    parser.add_argument("--quick", action="store_true", help="smaller sizes: about 6 minutes on a 2-core CPU")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=3, help="alternations of each comparison (default 3)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = data_dir()
    sizes = QUICK if args.quick else FULL
    device = torch.device(args.device)
    started = time.perf_counter()
    x_train, y_train = CIFAR10().load("train", data)
    x_test, y_test = CIFAR10().load("test", data)
    report = Report(device)
    model, pgd_trained = training(report, sizes, args.repeats, x_train, y_train)
    model, pgd_trained = model.to(device).eval(), pgd_trained.to(device).eval()
    images, labels = x_test[:sizes.samples], y_test[:sizes.samples]
    attacks(report, sizes, args.repeats, model, images, labels)
    defenses(report, args.repeats, model, images, labels)
    cascade(report, sizes, args.repeats, {"undefended": model, "PGD-trained": pgd_trained}, images, labels)
    runtimes(report, sizes, args.repeats, pgd_trained, images, labels)
    scaling(report, sizes, model, x_test, y_test)
    RESULTS.mkdir(exist_ok=True)
    picture = plot(report, RESULTS / "speed.png")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = (f"; peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
           if device.type == "cuda" else "")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    command = "python -m benchmarks" + (" --quick" if args.quick else "") + f" --device {args.device}"
    header = ["# Speed: the arena vs the bare libraries and the floor", "", f"`{command}` on {name}, "
              f"{args.repeats} repeats, torch {torch.__version__}, arena {arena.__version__}; "
              f"{time.perf_counter() - started:.0f} s in all; peak RSS {peak:.0f} MiB{gpu}. Cells are median (min) "
              "seconds; ratios compare minima.", ""]
    text = "\n".join(header + report.lines)
    (RESULTS / "speed.md").write_text(text)
    print(f"\nwrote {RESULTS / 'speed.md'} and {picture}")
