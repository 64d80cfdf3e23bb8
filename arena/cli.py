"""The ``arena`` command: ``run`` a scenario, print the ``leaderboard``, write a ``report``, export ``examples``, list
``plugins`` and the bundled ``scenarios``, ``validate`` a scenario."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from contextlib import ExitStack
from pathlib import Path

from arena import catalog
from arena.api import open_scenario
from arena.entries import cmd_examples, cmd_submit, cmd_verify
from arena.errors import ArenaError
from arena.examples import FORMATS as EXAMPLE_FORMATS
from arena.examples import GALLERY_ROWS
from arena.executors import RayExecutor, require_ray
from arena.formats import FORMATS, render
from arena.interchange import export as export_robustbench
from arena.interchange import read_all
from arena.leaderboard import board, compare_table, leaderboard_table, leaderboards, sweep_runs
from arena.matchups import REPORTERS
from arena.merge import merge
from arena.records import Run
from arena.registry import Registry, load_registry, unknown_name_message
from arena.report import write_report
from arena.running import resolve_device, run_scenario
from arena.runtime import Runtime
from arena.scenario import Scenario, bundled, declared_plugins, find_scenario, read_text, read_yaml
from arena.site import write_site
from arena.standing import as_json, open_stores, standing, tables
from arena.store import Store, StoreError
from arena.training import WeightsCache
from arena.verify import DEFAULT_SAMPLES
from arena.version import __version__

log = logging.getLogger("arena")
DEFAULT_RESULTS = Path("arena-results")


def _warn(registry: Registry) -> Registry:
    for error in registry.load_errors:
        log.warning("plugin not loaded: %s", error)
    return registry


def _registry(args: argparse.Namespace) -> Registry:
    """Plugins from entry points and ``-p`` modules."""
    return _warn(load_registry(modules=args.plugin, blocked=args.block))


def _scenario(args: argparse.Namespace) -> tuple[Scenario, Registry]:
    """The scenario argument, validated, with the registry of its declared plugins and ``-p`` modules."""
    scenario, registry = open_scenario(args.scenario, plugins=args.plugin, block=args.block,
                                       allow_plugins_outside=args.allow_plugins_outside)
    return scenario, _warn(registry)


def cmd_run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    cache = WeightsCache(args.cache_dir)
    cache.check()
    if args.executor == "ray":
        require_ray()
    scenario, registry = _scenario(args)

    executor = _executor(args, scenario)
    runs = run_scenario(scenario, registry, args.results, device=device, cache=cache, executor=executor,
                        progress=not args.quiet, fresh=args.fresh, report=not args.no_report, report_to=args.report_to,
                        runtime=Runtime(args.precision, args.compile, args.channels_last),
                        active_tests=args.active_tests)
    print("\n\n".join(render(leaderboard_table(p.run, p.table or []), wide=args.wide)  # tables once the bar is done
                      + f"\n\nresults: {p.store_path} (run {p.run.id}); summary: {p.summary_path}"
                      + (f"; report: {p.report_path}" if p.report_path else "") for p in runs))
    failed = [m for played in runs for m in played.failed]
    for m in failed:
        print(f"{m.status.upper()}: {m.attack} vs {m.model}+{m.defense}: {(m.detail or '').strip().splitlines()[-1]}",
              file=sys.stderr)
    return 1 if failed else 0


def _executor(args: argparse.Namespace, scenario: Scenario) -> RayExecutor | None:
    """The ``--executor`` option, else the scenario's ``executor:``; None plays in this process."""
    kind = args.executor or scenario.executor
    if kind == "local":
        return None
    require_ray()
    if args.workers is not None and args.workers < 1:
        raise ArenaError(f"--workers {args.workers}: give at least 1")
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else 0.0
    return RayExecutor(plugins=tuple(str(Path(p).resolve()) if p.endswith(".py") else p for p in
                                     [*args.plugin, *declared_plugins(args.scenario)]),
                       blocked=tuple(args.block), workers=args.workers or scenario.workers or 2,
                       address=args.address or scenario.address, gpus_per_worker=gpus)


def cmd_validate(args: argparse.Namespace) -> int:
    scenario, _ = _scenario(args)
    count = len(scenario.models) * len(scenario.defenses) * len(scenario.attacks)
    runs = f"{len(scenario.threats)} runs ({', '.join(map(str, scenario.threats))})" if len(scenario.threats) > 1 \
        else str(scenario.threat)
    print(f"{args.scenario}: valid; {count} matchups under {runs}")
    if scenario.plugins:  # validating needs them registered, so their code ran; say so
        print(f"imported its plugins to check it: {', '.join(scenario.plugins)} (no training, data or attack)")
    return 0


def _pick_run(store: Store, run_id: str | None, scenario: str | None) -> Run:
    """The run asked for: by id, else the latest of ``scenario``, else the latest of all."""
    if run_id or not scenario:
        return store.run(run_id)
    runs = store.runs(scenario=scenario)
    if not runs:
        known = sorted({r.scenario for r in store.runs()})
        raise StoreError(unknown_name_message(f"scenario in {store.path}", scenario, known))
    return runs[0]


def cmd_leaderboard(args: argparse.Namespace) -> int:
    with Store.open_existing(args.results) as store:
        if args.compare:
            a, b = (store.run(run_id) for run_id in args.compare)
            text = render(compare_table(a, board(store, a), b, board(store, b)), args.format, wide=args.wide)
        else:
            run = _pick_run(store, args.run, args.scenario)
            text, note = leaderboards(store, [run] if args.run else sweep_runs(store, run), args.format, args.wide)
            if note:
                print(note, file=sys.stderr)
    if args.out:
        try:
            args.out.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        except OSError as exc:
            raise ArenaError(f"--out {args.out}: cannot be written ({exc.strerror})") from None
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


BOARD_FORMATS = ("table", "md", "csv", "json", "html", "robustbench")


def cmd_board(args: argparse.Namespace) -> int:
    """Reads only the stores (and ``--reported`` files); html and robustbench write a folder."""
    if args.format in ("html", "robustbench") and args.out is None:
        raise ArenaError(f"--format {args.format} writes a folder: pass --out FOLDER")
    reported = read_all(args.reported)
    with ExitStack() as opened:
        stores = [opened.enter_context(store) for store in open_stores(args.results or [DEFAULT_RESULTS])]
        table = standing(stores, reported)
        if args.format in ("html", "robustbench"):
            try:
                if args.format == "html":
                    print(f"wrote {write_site(stores, table, args.out)} and the runs' reports")
                else:
                    written = export_robustbench(table, args.out)
                    print(f"wrote {len(written)} RobustBench model-info file(s) under {args.out}")
            except OSError as exc:
                raise ArenaError(f"--out {args.out}: cannot be written ({exc.strerror}: {exc.filename}); pass "
                                 "--out FOLDER in a place you can write") from None
            return 0
    text = as_json(table) if args.format == "json" else "\n\n".join(render(t, args.format, wide=args.wide)
                                                                    for t in tables(table))
    if args.out:
        try:
            args.out.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise ArenaError(f"--out {args.out}: cannot be written ({exc.strerror})") from None
        print(f"wrote {args.out}")
    else:
        print(text or "no run in these results folders yet")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    """Exit 1 when a copy of a run already here differed (one of the stores was altered): reported and flagged."""
    result = merge(args.results, args.other)
    print(f"merged {args.other} into {args.results}: {len(result.runs)} run(s) added, {len(result.known)} already "
          f"here, {result.matchups} matchup(s) imported")
    for altered in result.altered:
        print(f"ALTERED: {altered}", file=sys.stderr)
    for failure in result.failures:
        print(f"REPRODUCIBILITY: {failure}", file=sys.stderr)
    return 1 if result.altered else 0


def cmd_report(args: argparse.Namespace) -> int:
    """Reads only the store: no plugin is loaded, no data read, nothing trained or attacked."""
    with Store.open_existing(args.results) as store:
        run = store.run(args.run_id)
        try:
            page = write_report(store, run, board(store, run), args.out)
        except OSError as exc:
            raise ArenaError(f"cannot write the report to {exc.filename or args.out} ({exc.strerror}); pass "
                             "--out FOLDER in a place you can write") from None
    print(f"wrote {page} and its pictures")
    return 0


def cmd_scenarios(args: argparse.Namespace) -> int:
    """One line per bundled scenario: the name ``arena run`` takes, and the scenario's description."""
    found = bundled()
    width = max(map(len, found), default=0)
    for name, path in found.items():
        data, _ = read_yaml(read_text(path))
        print(f"{name:{width}}  {data.get('description', '')}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    registry = _registry(args)
    print(json.dumps(catalog.as_json(registry), indent=2) if args.json
          else "\n".join(catalog.lines(registry, verbose=args.verbose)))
    return 0


def positive(text: str) -> int:
    """An argparse type: an integer ≥ 1 (the benchmarks' counts use it too)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ≥ 1")
    return int(text)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="arena", description="Attacks, defenses and models as plugins; YAML scenarios match them up.",
        epilog="Start with `arena run quickstart`. Exit status: 0 done, 1 a matchup failed, 2 bad input, 130 Ctrl-C "
               "(finished matchups kept; the same command resumes). Docs: docs/ in the repository.")
    top.add_argument("--version", action="version", version=f"arena {__version__}")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")
    common = argparse.ArgumentParser(add_help=False, parents=[quiet])
    common.add_argument("-p", "--plugin", action="append", default=[], metavar="MODULE",
                        help="also load plugins from this importable module (repeatable)")
    common.add_argument("--block", action="append", default=[], metavar="NAME",
                        help="do not load the entry point or module NAME (repeatable)")
    common.add_argument("--allow-plugins-outside", action="store_true",
                        help="let a scenario's plugins: load .py files outside the scenario's folder")
    results = argparse.ArgumentParser(add_help=False)
    results.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results folder (default: %(default)s)")
    commands = top.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", parents=[common, results], help="play every matchup of a scenario")
    run.add_argument("scenario", type=find_scenario, help="a scenario file, or a bundled scenario's name "
                                                          "(`arena scenarios` lists them)")
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    run.add_argument("--cache-dir", type=Path, default=None, help="trained-weights cache (default: $ARENA_CACHE_DIR "
                                                                  "or the user cache folder)")
    run.add_argument("--fresh", action="store_true",
                     help="replay every matchup, even those the results store already holds with the same key")
    run.add_argument("--no-report", action="store_true", help="skip the pictures and HTML page at the end")
    run.add_argument("--report-to", action="append", default=[], choices=sorted(REPORTERS),
                     help="also report to this tracker (repeatable; adds to the scenario's report_to)")
    run.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                     help="bf16: attack gradients under autocast (examples still audited and judged in float32)")
    run.add_argument("--compile", action="store_true", help="torch.compile each network once before attacking")
    run.add_argument("--active-tests", action="store_true",
                     help="run the binarization test (Zimmermann et al. 2022) with every white-box matchup, on the "
                          "scenario's active_samples (default 100); costs about the attack's passes again per sample")
    run.add_argument("--wide", action="store_true", help="every column of the leaderboard, unwrapped")
    run.add_argument("--channels-last", action="store_true", help="channels-last memory format (faster on GPUs)")
    run.add_argument("--executor", choices=("local", "ray"), default=None,
                     help="local (this process) or ray (a Ray cluster); default: the scenario's, else local")
    run.add_argument("--workers", type=int, default=None, help="Ray workers, one torch thread each (default 2)")
    run.add_argument("--address", default=None, help="join this running Ray cluster (default: start a local one)")
    run.add_argument("--gpus-per-worker", type=float, default=None,
                     help="each Ray worker's share of a GPU, e.g. 0.25 to put four on one (default 0)")
    run.set_defaults(func=cmd_run)

    validate = commands.add_parser("validate", parents=[common], help="check a scenario without running it")
    validate.add_argument("scenario", type=find_scenario, help="a scenario file, or a bundled scenario's name")
    validate.set_defaults(func=cmd_validate)

    board = commands.add_parser("leaderboard", parents=[common, results], help="print a run's leaderboard")
    board.add_argument("--run", default=None, help="run id (default: the latest run)")
    board.add_argument("--scenario", default=None, help="the latest run of this scenario name")
    board.add_argument("--format", choices=FORMATS, default="table", help="output format (default: %(default)s)")
    board.add_argument("--out", type=Path, default=None, help="write to this file instead of the terminal")
    board.add_argument("--wide", action="store_true",
                       help="every column of the text table, unwrapped (default: fits 120 columns)")
    board.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="the rows both runs share, and B − A")
    board.set_defaults(func=cmd_leaderboard)

    standing_board = commands.add_parser(
        "board", parents=[quiet], help="the standing leaderboard: one table per threat model over every run of one or "
                                       "more results folders, with provenance")
    standing_board.add_argument("--results", type=Path, action="append", default=None, metavar="FOLDER",
                                help=f"results folder (repeatable; default: {DEFAULT_RESULTS})")
    standing_board.add_argument("--reported", type=Path, action="append", default=[], metavar="PATH",
                                help="RobustBench model-info .json file or folder, shown beside as reported rows "
                                     "(repeatable)")
    standing_board.add_argument("--format", choices=BOARD_FORMATS, default="table",
                                help="html: a static site; robustbench: model-info JSON files (both need --out)")
    standing_board.add_argument("--out", type=Path, default=None, help="file, or folder for html and robustbench")
    standing_board.add_argument("--wide", action="store_true",
                                help="every column of the text table, unwrapped (default: fits 120 columns)")
    standing_board.set_defaults(func=cmd_board)

    merging = commands.add_parser("merge", parents=[quiet, results],
                                  help="import another results store's runs into --results, without duplicates")
    merging.add_argument("other", type=Path, help="the other results folder, or its arena.db")
    merging.set_defaults(func=cmd_merge)

    report = commands.add_parser("report", parents=[quiet, results],
                                 help="write a run's pictures and HTML leaderboard from its results store alone")
    report.add_argument("run_id", nargs="?", default=None, help="run id (default: the latest run)")
    report.add_argument("--out", type=Path, default=None, help="folder (default: RESULTS/reports/RUN_ID)")
    report.set_defaults(func=cmd_report)

    examples = commands.add_parser("examples", parents=[quiet, results],
                                   help="export the adversarial examples a run kept, as .npz or a PNG gallery")
    examples.add_argument("run_id", nargs="?", default=None, help="run id (default: the latest run)")
    for name in ("model", "defense", "attack"):
        examples.add_argument(f"--{name}", default=None, help=f"only this {name} (default: all)")
    examples.add_argument("--format", choices=EXAMPLE_FORMATS, default="npz", help="npz: exact values; png: a gallery")
    examples.add_argument("--limit", type=positive, default=None,
                          help=f"at most N examples per matchup (default: all for npz, {GALLERY_ROWS} for png)")
    examples.add_argument("--out", type=Path, required=True, help="folder to write into, one file per matchup")
    examples.add_argument("--entry", default=None, help="instead: the worst-case image of each broken sample of this "
                                                        "board entry (MODEL+DEFENSE), one .npz")
    examples.add_argument("--all", action="store_true", help="with --entry: refuse unless every broken sample has one")
    examples.set_defaults(func=cmd_examples)

    checking = commands.add_parser("verify", parents=[common, results],
                                   help="replay seeded-random samples of a board entry's matchups here and mark it "
                                        "verified or not reproducible")
    checking.add_argument("entry", help="MODEL+DEFENSE as the board names it (MODEL+DEFENSE@HASH or @EPS when "
                                        "several entries share the label)")
    checking.add_argument("--samples", type=positive, default=DEFAULT_SAMPLES,
                          help="samples replayed per matchup (default: %(default)s)")
    checking.add_argument("--seed", type=int, default=None, help="seed of the sample draw (default: a fresh one, "
                                                                 "recorded with the mark)")
    checking.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the run's device type)")
    checking.add_argument("--cache-dir", type=Path, default=None, help="weights cache (default: $ARENA_CACHE_DIR "
                                                                       "or the user cache folder)")
    checking.add_argument("--train", action="store_true", help="train weights the cache lacks (default: refuse)")
    checking.set_defaults(func=cmd_verify)

    submitting = commands.add_parser("submit-examples", parents=[common, results],
                                     help="count adversarial images made elsewhere against a board entry")
    submitting.add_argument("file", type=Path, help=".npz or .safetensors ('adversarial', 'sample'), or "
                                                    "RobustBench's .pt tensor")
    submitting.add_argument("--entry", required=True, help="MODEL+DEFENSE as the board names it")
    submitting.add_argument("--name", required=True, help="recorded as the attack external:NAME")
    submitting.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the run's device type)")
    submitting.add_argument("--cache-dir", type=Path, default=None, help="weights cache (default: $ARENA_CACHE_DIR "
                                                                         "or the user cache folder)")
    submitting.set_defaults(func=cmd_submit)

    scenarios = commands.add_parser("scenarios", parents=[quiet],
                                    help="list the bundled scenarios, which `arena run NAME` takes")
    scenarios.set_defaults(func=cmd_scenarios)

    listing = commands.add_parser("plugins", parents=[common], help="list the loaded plugins, one line each")
    listing.add_argument("-v", "--verbose", action="store_true", help="each plugin's parameters too")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=cmd_plugins)
    return top


def main(argv: list[str] | None = None) -> int:
    """The ``arena`` command on ``argv``: exit 2 on bad input, 1 when a matchup failed, 130 on Ctrl-C (the console
    script, ``arena.__main__.run``, also covers the imports and the exit)."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except ArenaError as exc:
        print(f"arena: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        results = getattr(args, "results", DEFAULT_RESULTS)
        print(f"arena: interrupted; every finished matchup is kept in {results / 'arena.db'}; run the same command "
              "again to resume", file=sys.stderr)
        return 130
