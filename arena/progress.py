"""One progress bar for a whole ``arena run``: matchups done of every matchup it will play (each ε of a sweep
included), elapsed time and ETA, with each finished matchup's log line printed above the bar rather than through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


@contextmanager
def run_progress(total: int, enabled: bool = True) -> Iterator[tqdm]:
    """The overall bar, ``total`` matchups long; while it is open, log lines are written above it."""
    with logging_redirect_tqdm(), tqdm(total=total, desc="matchups", unit="matchup", disable=not enabled,
                                       dynamic_ncols=True) as bar:
        yield bar
