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
import math

import torch

from arena.cost import Counted
from arena_plugins.apgd import EarlyAPGDCE, EarlyAPGDT, dlr_margin, stalled
from arena_plugins.fast import DISCARD
from benchmarks import suite
from benchmarks.common import data_dir, networks, write

#: The adversarially trained rows of the suite benchmark the rule is fitted on (model, norm, ε).
ROWS = ["cnn_pgd_at:linf:8/255", "cnn_pgd_at:linf:0.1", "cnn_fast_fgsm_at:linf:8/255", "cnn_fast_fgsm_at:linf:0.1",
        "cnn_lstm_pgd_at:linf:8/255", "cnn_lstm_pgd_at:linf:0.1", "cnn_robust:linf:8/255"]
EARLIER = {"discard_after": 10, "discard_margin": 0.2}


def traced(net: torch.nn.Module) -> Counted:
    """The network, tracing each gradient-carrying call's DLR-scaled margins (the rule's measure) for the rows of the
    watched batch it covers."""
    return Counted(net, measure=dlr_margin).eval()


def traced_run(attack: EarlyAPGDCE, net: Counted, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor,
               todo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One run on ``todo`` through ``net`` (``traced``): its ``[iterations + 1, samples]`` closest-margin-so-far trace
    and the iteration each sample broke at (-1: it did not)."""
    net.watch(y)
    broken, _ = attack.run(x[todo], y[todo], targets[todo], todo)
    trace = net.trace()[:, todo]
    if len(trace) <= attack.n_iter:  # every sample broke before the last iteration: nothing changes after
        rest = torch.full((attack.n_iter + 1 - len(trace), len(todo)), float("nan"), dtype=trace.dtype)
        trace = torch.cat([trace, rest])
    exited = trace.isnan().cumsum(0) > 0  # an exited sample's margin: broken, below 0
    closest = torch.where(exited, torch.full_like(trace, -1.0), trace).cummin(0)[0]
    broke_at = torch.where(broken, (closest < 0).float().argmax(0), torch.full_like(closest[0], -1)).long()
    return closest, broke_at


def dropped(closest: torch.Tensor, rule: dict[str, float]) -> torch.Tensor:
    """The samples ``rule`` (the discarding parameters) drops at its iteration, from their closest-margin traces: still
    farther than its margin and closer by less than its progress over the last two thirds of its iterations."""
    after = int(rule["discard_after"])
    return stalled(closest[after], closest[after // 3], rule["discard_margin"], rule.get("discard_progress", math.inf))


def rows(text: str) -> list[str]:
    """``--rows``: comma-separated ``MODEL:NORM:EPS``, each checked (a bad one: one line, exit 2)."""
    chosen = text.split(",")
    for row in chosen:
        suite.row(row)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="test images (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--rows", type=rows, default=ROWS, help="MODEL:NORM:EPS, comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir()
    lines = ["| row | run | attacked | late breaks | dropped by the rule | dropped by the earlier rule | survivors | "
             "survivors dropped by the rule | largest margin of a kept late break at its decision | smallest "
             "progress of a far late break |", "|" + " --- |" * 10]
    totals = [0, 0, 0, 0, 0]
    for row in args.rows:
        key, norm, eps = suite.row(row)
        scenario, data, nets = networks(suite.row_scenario(row, args.samples))
        (net,), images, labels = nets.values(), data.images, data.labels
        with torch.no_grad():
            logits = net(images)
        watched = traced(net)
        torch.manual_seed(0)
        ce = EarlyAPGDCE(watched, scenario.threat)
        apgd_t = EarlyAPGDT(watched, scenario.threat, n_target_classes=3, ranking="malt")
        todo = (logits.argmax(1) == labels).nonzero().flatten()
        closest, broke_at = traced_run(ce, watched, images, labels, labels, todo)
        results = [("APGD-CE", closest, broke_at)]
        left = todo[broke_at < 0]
        for j, targets in enumerate(apgd_t.runs(images, labels, logits, torch.isin(torch.arange(len(labels)), left))):
            closest, broke_at = traced_run(apgd_t, watched, images, labels, targets, left)
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


if __name__ == "__main__":
    main()
