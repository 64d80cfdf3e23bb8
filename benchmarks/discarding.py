"""Where the ``fast`` suite's discarding rule comes from: every sample's DLR-scaled margin at every APGD iteration,
nothing discarded, on the benchmark's adversarially trained rows, and what the rule would have dropped.

    python -m benchmarks.discarding [--samples 1000] [--threads 1] [--rows cnn_pgd_at:linf:0.1,...]

Per row, APGD-CE (100 iterations) on the correctly classified samples, then APGD-T on the three MALT targets on what
APGD-CE left, as the suite plays them but with discarding off, each run traced. A sample breaking after the rule's
iteration is a *late break*: the rule must keep it (closer than the margin, or still closing in), while every
survivor it drops saves the rest of that run. Also printed: the earlier fixed rule (drop at iteration 10 beyond 0.2),
which lost late breaks at ε = 0.1. Models and weights are ``benchmarks.suite``'s (``--recipe short``), from its cache.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import yaml

from arena import ThreatModel
from arena.cost import Counted
from arena.data import Data
from arena.engine import predict
from arena.matchups import Arena
from arena.registry import load_registry
from arena.scenario import load_scenario
from arena_plugins.apgd import EarlyAPGDCE, EarlyAPGDT, dlr_margin
from arena_plugins.fast import DISCARD
from benchmarks import suite
from benchmarks.common import data_dir, write

#: The adversarially trained rows of the suite benchmark the rule is fitted on (model, norm, ε).
ROWS = ["cnn_pgd_at:linf:8/255", "cnn_pgd_at:linf:0.1", "cnn_fast_fgsm_at:linf:8/255", "cnn_fast_fgsm_at:linf:0.1",
        "cnn_lstm_pgd_at:linf:8/255", "cnn_lstm_pgd_at:linf:0.1", "cnn_robust:linf:8/255"]
EARLIER = {"discard_after": 10, "discard_margin": 0.2}
BATCH = 500


class Traced(Counted):
    """The network, recording each gradient-carrying call's DLR-scaled margins for the rows it covers."""

    def __init__(self, module: torch.nn.Module, labels: torch.Tensor) -> None:
        super().__init__(module)
        self.labels = labels
        self.calls: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output = super().forward(images)
        rows = self._active
        if output.requires_grad and rows is not None and len(rows) == len(images):
            row = torch.full((len(self.labels),), float("nan"), dtype=output.dtype)
            self.calls.append(row.index_copy(0, rows, dlr_margin(output.detach(), self.labels[rows])))
        return output


def traced_run(attack: EarlyAPGDCE, net: Traced, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor,
               todo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One run on ``todo``: its ``[iterations + 1, samples]`` closest-margin-so-far trace and the iteration each
    sample broke at (-1: it did not)."""
    net.calls = []
    broken, _ = attack.run(x[todo], y[todo], targets[todo], todo)
    trace = torch.stack(net.calls)[:, todo]
    if len(trace) <= attack.n_iter:  # every sample broke before the last iteration: nothing changes after
        rest = torch.full((attack.n_iter + 1 - len(trace), len(todo)), float("nan"), dtype=trace.dtype)
        trace = torch.cat([trace, rest])
    exited = trace.isnan().cumsum(0) > 0
    at = torch.where(exited, torch.full_like(trace, -1.0), trace)  # an exited sample's margin: broken, below 0
    closest = at.cummin(0)[0]
    broke_at = torch.where(broken, (closest < 0).float().argmax(0), torch.full_like(closest[0], -1)).long()
    return closest, broke_at


def dropped(closest: torch.Tensor, rule: dict[str, float]) -> torch.Tensor:
    """The samples ``rule`` (the discarding parameters) drops at its iteration, from their closest-margin traces: still
    farther than its margin and closer by less than its progress over the last two thirds of its iterations."""
    after = int(rule["discard_after"])
    now, earlier = closest[after], closest[after // 3]
    return (now > rule["discard_margin"]) & (earlier - now < rule.get("discard_progress", float("inf")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="test images (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--rows", type=lambda t: t.split(","), default=ROWS, help="MODEL:NORM:EPS, comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir()
    lines = ["| row | run | attacked | late breaks | dropped by the rule | dropped by the earlier rule | survivors | "
             "survivors dropped by the rule | largest margin of a kept late break at its decision | smallest "
             "progress of a far late break |", "|" + " --- |" * 10]
    totals = [0, 0, 0, 0, 0]
    for row in args.rows:
        key, norm, eps = row.split(":")
        net, images, labels, threat = network(key, norm, eps, args.samples)
        robust = predict(net, images, BATCH, torch.device("cpu")) == labels
        traced = Traced(net, labels).eval()
        torch.manual_seed(0)
        ce, apgd_t = EarlyAPGDCE(traced, threat), EarlyAPGDT(traced, threat, n_target_classes=3, ranking="malt")
        todo = robust.nonzero().flatten()
        closest, broke_at = traced_run(ce, traced, images, labels, labels, todo)
        results = [("APGD-CE", closest, broke_at)]
        left = todo[broke_at < 0]
        still = torch.zeros_like(robust)
        still[left] = True
        with torch.no_grad():
            logits = net(images)
        for j, targets in enumerate(apgd_t.runs(images, labels, logits, still)):
            closest, broke_at = traced_run(apgd_t, traced, images, labels, targets, left)
            results.append((f"APGD-T {j + 1}", closest, broke_at))
            left = left[broke_at < 0]
        for name, closest, broke_at in results:
            after, margin = DISCARD["discard_after"], DISCARD["discard_margin"]
            late, survivor, drop = broke_at > after, broke_at < 0, dropped(closest, DISCARD)
            near, far = late & (closest[after] <= margin), late & (closest[after] > margin)
            progress = closest[after // 3] - closest[after]
            counts = [int(c.sum()) for c in (late, late & drop, late & dropped(closest, EARLIER), survivor,
                                             survivor & drop)]
            lines.append(f"| {key} {norm} {eps} | {name} | {len(broke_at)} | {' | '.join(map(str, counts[:4]))} | "
                         f"{counts[4]} ({counts[4] / max(counts[3], 1):.0%}) | "
                         f"{closest[after][near].max().item() if near.any() else float('nan'):.3f} | "
                         f"{progress[far].min().item() if far.any() else float('nan'):.3f} |")
            print(lines[-1], flush=True)
            totals = [t + c for t, c in zip(totals, counts)]
    late, lost, lost_before, survivors, drops = totals
    rule = ", ".join(f"{k} {v}" for k, v in DISCARD.items())
    lines += ["", f"Over the rows: {late} late breaks, {lost} dropped by the rule ({rule}), {lost_before} by the "
                  f"earlier rule (discard_after 10, discard_margin 0.2); {drops} of {survivors} survivor runs "
                  f"({drops / max(survivors, 1):.0%}) dropped by the rule.", "",
              f"{args.samples} CIFAR-10 test images, the suite benchmark's short-recipe models (`cnn_robust`: its "
              "full recipe), seed 0, APGD's 100 iterations with discarding off; a late break broke after iteration "
              f"{DISCARD['discard_after']}, margins are DLR-scaled and untargeted, progress is the fall of the "
              f"closest margin from iteration {DISCARD['discard_after'] // 3} to {DISCARD['discard_after']}."]
    write("discarding", "The fast suite's discarding rule against every sample's margin trace",
          f"python -m benchmarks.discarding --samples {args.samples} --threads {args.threads}"
          + ("" if args.rows == ROWS else f" --rows {','.join(args.rows)}"), lines)


def network(key: str, norm: str, eps: str, samples: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor,
                                                                   ThreatModel]:
    """A suite benchmark model (trained or from the cache), its first ``samples`` test images and the threat."""
    threat_eps: str | float = eps if "/" in eps else float(eps)
    options = argparse.Namespace(samples=samples, recipe="short", targets=3, probe_queries=100)
    scenario = {**suite.pair_scenario(key, norm, threat_eps, options), "attacks": ["fgsm"]}
    folder = Path(tempfile.mkdtemp(prefix="arena-bench-"))
    (folder / "scenario.yaml").write_text(yaml.safe_dump(scenario))
    registry = load_registry()
    arena = Arena(load_scenario(folder / "scenario.yaml", registry), registry, folder / "results", progress=False)
    data = Data.load(arena.scenario, registry)
    net = arena.networks.defended(data, arena.scenario.models[0], arena.scenario.defenses[0])
    return net, data.images, data.labels, arena.scenario.threat


if __name__ == "__main__":
    main()
