"""The speed suite behind ``python -m benchmarks`` (see ``benchmarks/__main__.py``).

Every comparison runs the two sides on the same model, images and device, alternating them ``--repeats`` times, and
reports the median and the minimum. A ratio is ``bare time / arena time`` on the minima: 1.00 means the arena costs
nothing over the library it wraps, 0.95 is the bar below which a gap counts as a defect to explain.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
import torchattacks
from pyautoattack.autopgd_base import APGDAttack
from pyautoattack.square import SquareAttack

import arena
from arena import engine, matchups
from arena.cli import device_option, positive
from arena.cost import Counted
from arena.errors import ArenaError
from arena.records import Matchup
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


def clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the device has finished its queued work."""
    sync(device)
    return time.perf_counter()


def timed(device: torch.device, work: Callable[..., Any], *args: Any) -> float:
    """Wall seconds of ``work(*args)``, the device synchronised before and after."""
    start = clock(device)
    work(*args)
    return clock(device) - start


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
    times, trained, bare = alternate(device, repeats, initial, lambda net: trainer.fit(net, x, y),
                                     lambda net: bare_epoch(net, x, y, 0, device))
    same = all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), bare.state_dict().values()))
    rows = [["1 epoch, seed recipe", f"{len(x):,}", cell(times["arena"]), cell(times["bare"]),
             ratio(times["bare"], times["arena"]), "identical" if same else "differ"]]

    xa, ya = x_train[:sizes.art_train], y_train[:sizes.art_train]
    madry = MadryPGD(eps=EPS, eps_step=None, max_iter=3, num_random_init=1, epochs=1)
    times, pgd_trained, _ = alternate(device, repeats, initial, lambda net: madry.train(net, xa, ya, trainer),
                               lambda net: art_madry(net, xa, ya, device))
    rows.append(["ART Madry PGD-3, 1 epoch", f"{len(xa):,}", cell(times["arena"]), cell(times["bare"]),
                 ratio(times["bare"], times["arena"]), "–"])
    report.table("Training", ["what", "images", "arena s, median (min)", "bare s", "bare/arena", "weights"], rows,
                 "Bare: the same recipe as a plain PyTorch loop; for ART, `AdversarialTrainerMadryPGD` built and "
                 "fitted directly. Weights compare the arena's epoch with the bare loop's, bit for bit.")
    return trained, pgd_trained


def alternate(
    device: torch.device, repeats: int, initial: torch.nn.Module, ours: Callable[[torch.nn.Module], Any],
    bare: Callable[[torch.nn.Module], Any],
) -> tuple[dict[str, list[float]], torch.nn.Module, torch.nn.Module]:
    """Train a fresh copy of ``initial`` the arena's way and the bare way, alternately, ``repeats`` times: the times
    of each side and the last network each trained."""
    times: dict[str, list[float]] = {"arena": [], "bare": []}
    for _ in range(repeats):
        arena_net, bare_net = copy.deepcopy(initial), copy.deepcopy(initial)
        times["arena"].append(timed(device, ours, arena_net))
        times["bare"].append(timed(device, bare, bare_net))
    return times, arena_net, bare_net


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


def bare_attack(name: str, model: torch.nn.Module, sizes: Sizes, seed: int = 0,
                ) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    """The library call the arena's plugin wraps, with the same parameters (and ``seed``, the one the arena gave
    AutoAttack's attacks, so both sides make the same random search)."""
    if name == "fgsm":
        return torchattacks.FGSM(model, eps=EPS)
    if name == "pgd":
        return torchattacks.PGD(model, eps=EPS, alpha=2.5 * EPS / 10, steps=10, random_start=True)
    if name == "apgd_ce":
        return APGDAttack(model, n_iter=sizes.apgd_iter, norm="Linf", n_restarts=1, eps=EPS, seed=seed, loss="ce",
                          eot_iter=1, rho=0.75).perturb
    return SquareAttack(model, norm="Linf", n_queries=sizes.square_queries, eps=EPS, p_init=0.8, n_restarts=1,
                        seed=seed, resc_schedule=False).perturb


@dataclass
class _Timed:
    """An attack behind a timed call; everything else the engine reads (name, threat, ``rebuilt``) is the attack's."""

    attack: arena.Attack
    call: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.call(images, labels)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.attack, name)


class Phases:
    """Where each matchup's wall time goes, measured inside the arena's own engine by wrapping the functions
    ``arena.engine`` calls: ``attack`` (the attack's calls on the attacked samples), ``judging`` (audit, the float32
    prediction, the kept examples), ``checks`` (the probe, and the label-leak pass's attack calls) and ``setup`` (the
    rest of the matchup: building the attack and the module it differentiates, seeding, recording)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        #: Per attack entry, its phases' seconds in the last matchup played (and ``total``, its wall time).
        self.found: dict[str, dict[str, float]] = {}
        #: Per attack entry, the seed the arena's plugin gave the library (AutoAttack's attacks), for the bare call.
        self.seeds: dict[str, int] = {}
        self._current: dict[str, float] | None = None
        self._busy = False

    def __enter__(self) -> Phases:
        self._stack = contextlib.ExitStack()
        for name, phase in (("probe", "checks"), ("audit", "judging"), ("predict", "judging"),
                            ("_examples", "judging")):
            self._stack.enter_context(mock.patch.object(engine, name, self._timed(phase, getattr(engine, name))))
        self._stack.enter_context(mock.patch.object(matchups.Arena, "attacker", self._attacker()))
        self._stack.enter_context(mock.patch.object(engine.Engine, "play", self._matchup()))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _timed(self, phase: str | Callable[[], str], work: Callable[..., Any]) -> Callable[..., Any]:
        """``work`` with its time added to ``phase`` while a matchup runs (outermost timed call only)."""

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if self._current is None or self._busy:
                return work(*args, **kwargs)
            self._busy = True
            name = phase() if callable(phase) else phase
            start = clock(self.device)
            try:
                return work(*args, **kwargs)
            finally:
                self._current[name] += clock(self.device) - start
                self._busy = False

        return wrapped

    def _attacker(self) -> Callable[..., Any]:
        built = matchups.Arena.attacker

        def attacker(arena: matchups.Arena, *args: Any) -> tuple[Any, Counted, dict[str, Any]]:
            attack, counted, gradient = built(arena, *args)
            if hasattr(attack, "seed"):
                self.seeds[args[-1].key] = attack.seed
            # the engine counts the label-leak pass apart (``Counted.apart``): those calls are a check, not the attack
            main = counted.passes
            call = self._timed(lambda: "attack" if counted.passes is main else "checks", attack)
            return _Timed(attack, call), counted, gradient

        return attacker

    def _matchup(self) -> Callable[..., Matchup]:
        played = engine.Engine.play

        def matchup(played_by: engine.Engine, *args: Any) -> Matchup:
            self._current = dict.fromkeys(("attack", "judging", "checks"), 0.0)
            try:
                m = played(played_by, *args)
            finally:
                parts, self._current = self._current, None
            self.found[m.attack] = {**parts, "setup": m.wall_time_s - sum(parts.values()), "total": m.wall_time_s}
            return m

        return matchup


def run_bare(call: Callable[[torch.Tensor, torch.Tensor], Any], images: torch.Tensor, labels: torch.Tensor,
             device: torch.device) -> None:
    for x, y in batches(images, labels, 500, device):
        call(x, y)


def attacks(report: Report, sizes: Sizes, repeats: int, model: torch.nn.Module, images: torch.Tensor,
            labels: torch.Tensor) -> None:
    """Each attack as an arena matchup (``arena.evaluate``: audit, checks, pass counting included), split into its
    phases, vs the bare library call on the samples the arena attacked (the initially-correct ones) vs the floor."""
    device, entries = report.device, attack_entries(sizes)
    threat = arena.ThreatModel("linf", EPS)
    phase_names = ("attack", "judging", "checks", "setup")
    ours: dict[str, list[dict[str, float]]] = {name: [] for name in entries}
    bare: dict[str, list[float]] = {name: [] for name in entries}
    floors: dict[str, list[float]] = {name: [] for name in entries}
    passes: dict[str, float] = {}
    bare_passes: dict[str, float] = {}
    for _ in range(repeats):
        with Phases(device) as phases:
            result = arena.evaluate(model, images, labels, attacks=list(entries.values()), threat=threat,
                                    device=device)
        correct = torch.from_numpy(result.clean_correct)
        x, y = images[correct], labels[correct]
        for m in result.matchups:
            ours[m.attack].append(phases.found[m.attack])
            passes[m.attack] = (m.forward_passes + m.backward_passes) / max(int(correct.sum()), 1)
        for name in entries:
            if name not in bare_passes:  # counted once, untimed: the library's own passes per attacked sample
                counted = Counted(model).eval()  # torchattacks restores the mode it found: keep it eval
                run_bare(bare_attack(name, counted, sizes, phases.seeds.get(name, 0)), x, y, device)
                bare_passes[name] = (counted.passes.forward + counted.passes.backward) / max(len(x), 1)
            call = bare_attack(name, model, sizes, phases.seeds.get(name, 0))
            bare[name].append(timed(device, run_bare, call, x, y, device))
            steps = {"fgsm": 1, "pgd": 10, "apgd_ce": sizes.apgd_iter}.get(name)
            if steps:
                floors[name].append(timed(device, floor, model, x, y, steps, device))
    rows = []
    for name in entries:
        total = [p["total"] for p in ours[name]]
        least = {phase: min(p[phase] for p in ours[name]) for phase in phase_names}
        floor_cells = [cell(floors[name]), f"{min(floors[name]) / least['attack']:.2f}"] if floors[name] else ["–"] * 2
        rows.append([name, f"{int(correct.sum())}", cell(total), cell(bare[name]), ratio(bare[name], total),
                     *(f"{least[phase]:.2f}" for phase in phase_names), f"{min(bare[name]) / least['attack']:.2f}",
                     *floor_cells, f"{passes[name]:.1f} / {bare_passes[name]:.1f}"])
    report.table("Attacks", ["attack", "samples attacked", "arena s, median (min)", "bare library s", "bare/arena",
                             "of which attack s", "judging s", "checks s", "setup s", "bare/attack",
                             "floor s", "floor/attack", "passes per attacked sample, arena / bare"], rows,
                 f"L∞ ε = {EPS}, {len(images)} test images, batch 500. Bare: torchattacks (FGSM, PGD) or pyautoattack "
                 "(APGD-CE, Square) called directly on the same initially-correct samples. Floor: k forward+backward "
                 "passes to the input for a k-step gradient attack (none for Square, a query search). The arena's "
                 "matchup time is split by timing its own engine (each phase's minimum over the repeats): the "
                 "attack's calls; judging (audit, the float32 prediction, kept examples); checks (the probe: 5 "
                 "forward passes and a gradient on up to 100 samples, and for a single-step attack outside a cascade "
                 "the attack run again on the misclassified samples, the label-leak check); setup, the rest "
                 "(building the attack and its module, seeding, recording). bare/attack compares the library with "
                 "the arena's own calls of it.")


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


def scaling(report: Report, sizes: Sizes, repeats: int, model: torch.nn.Module, images: torch.Tensor,
            labels: torch.Tensor) -> None:
    """PGD matchup time against attacked samples (10 steps) and against steps (at the second sample size); the
    points are interleaved and repeated like every other comparison, and each is its minimum."""
    threat = arena.ThreatModel("linf", EPS)
    runs = {"samples": [(n, 10) for n in sizes.scale_samples], "steps": [(sizes.scale_samples[1], k)
                                                                          for k in sizes.scale_steps]}
    times: dict[tuple[int, int], list[float]] = {point: [] for settings in runs.values() for point in settings}
    attacked: dict[int, int] = {}
    for _ in range(repeats):
        for n, steps in times:
            result = arena.evaluate(model, images[:n], labels[:n], attacks=[{"name": "pgd", "steps": steps}],
                                    threat=threat, device=report.device)
            times[n, steps].append(result.matchups[0].wall_time_s)
            attacked[n] = int(result.clean_correct.sum())
    rows = []
    for axis, settings in runs.items():
        points = [(attacked[n] if axis == "samples" else steps, min(times[n, steps])) for n, steps in settings]
        a, b, exponent = fit(points)
        report.scaling[axis] = points
        unit = "s per attacked sample" if axis == "samples" else "s per step"
        rows.append([axis, ", ".join(f"{x:g}: {t:.2f} s" for x, t in points), f"{b:.4g} {unit}", f"{a:.2f} s",
                     f"{exponent:.2f}"])
    report.table("Scaling (PGD matchup)", ["against", "points (min)", "slope", "intercept", "log-log exponent"], rows,
                 "Each point is the minimum over the repeats, the points interleaved. Time is linear when the log-log "
                 "exponent is near 1 and the intercept small against the points.")


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
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description="The arena's speed against the bare libraries and the floor.")
    parser.add_argument("--quick", action="store_true", help="smaller sizes: about 6 minutes on a 2-core CPU")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--repeats", type=positive, default=3, help="alternations of each comparison (default 3)")
    parser.add_argument("--threads", type=positive, default=torch.get_num_threads(), help="torch threads")
    args = parser.parse_args()
    try:
        device = device_option(args.device)
    except ArenaError as exc:
        parser.error(str(exc))
    torch.set_num_threads(args.threads)
    data = data_dir()
    sizes = QUICK if args.quick else FULL
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
    scaling(report, sizes, args.repeats, model, x_test, y_test)
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
