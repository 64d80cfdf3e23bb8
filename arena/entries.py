"""The commands that act on one board entry or its examples: ``arena examples``, ``arena verify`` and
``arena submit-examples`` (the checkable board's loop: export, re-check, add examples made elsewhere)."""

from __future__ import annotations

import argparse
import sys

from arena.errors import ArenaError
from arena.examples import export, export_entry, select
from arena.external import submit
from arena.running import resolve_device
from arena.store import Store
from arena.verify import verify


def cmd_examples(args: argparse.Namespace) -> int:
    """Reads only the store, like ``report``."""
    with Store.open_existing(args.results) as store:
        if args.entry:
            if args.format != "npz":
                raise ArenaError("--entry writes npz (what `arena submit-examples` reads); pass --format npz")
            path, count, broken = export_entry(store, args.entry, args.out, args.all)
            print(f"wrote {path} ({count} of the entry's {broken} broken samples)")
            return 0
        run = store.run(args.run_id)
        matchups = select(store, run, args.model, args.defense, args.attack)
        written = export(store, run, matchups, args.out, args.format, args.limit)
    for path, count in written:
        print(f"wrote {path} ({count} example{'s' * (count != 1)})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 when the entry verified, 1 when it is not reproducible (the differing samples on stderr)."""
    device = resolve_device(args.device) if args.device else None
    mark = verify(args.results, args.entry, args.samples, args.seed, device, args.cache_dir, tuple(args.plugin),
                  args.train)
    print(f"{mark.entry}: {mark.mark}; {len(mark.keys)} matchup(s), samples {mark.samples}, seed {mark.seed}")
    for line in mark.differing:
        print(f"DIFFERS: {line}", file=sys.stderr)
    return 0 if mark.status == "verified" else 1


def cmd_submit(args: argparse.Namespace) -> int:
    """Exit 0 once the file's images are audited, classified and stored as the attack ``external:NAME``."""
    device = resolve_device(args.device) if args.device else None
    m, run_id = submit(args.results, args.file, args.entry, args.name, device, args.cache_dir, tuple(args.plugin))
    assert m.attacked is not None and m.clean_correct is not None and m.robust_correct is not None, "a played matchup"
    print(f"{m.attack} vs {m.model}+{m.defense}: {int(m.attacked.sum())} images audited, "
          f"{int((m.clean_correct & ~m.robust_correct).sum())} samples broken, robust {m.robust_accuracy:.1%} "
          f"(run {run_id}, sha256 {m.params['attack']['sha256'][:12]})")
    return 0
