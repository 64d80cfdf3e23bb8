"""``python -m arena`` and the ``arena`` console script: the command line, with Ctrl-C handled from its first line.

One Ctrl-C ends the arena the same way wherever it lands (imports, training, an attack batch, a store write, Ray
start-up, the exit itself): one line on stderr, every finished matchup kept, exit status 130. Two gaps let it die by
the signal instead (status -2 to ``subprocess``): a ``KeyboardInterrupt`` raised outside ``arena.cli.main`` (while
torch imports, or after ``main`` returned), which Python turns into death by SIGINT; and a second SIGINT during the
stop or the interpreter's shutdown, where Python has put the default action back. So SIGINT is answered here before
anything heavy is imported, and the first one stops the arena while every later one is ignored.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType


def _stop(signum: int, frame: FrameType | None) -> None:
    """The first SIGINT: ignore every later one (the stop and the exit are short), then stop the work."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def run() -> None:
    """Entry point of the ``arena`` console script: exit 2 on bad input, 1 when a matchup failed, 130 on Ctrl-C."""
    signal.signal(signal.SIGINT, _stop)
    try:
        from arena.cli import main  # torch and the plugins: seconds, during which Ctrl-C must work as everywhere

        code = main()
    except KeyboardInterrupt:  # before ``main`` began to handle it, or after it returned
        print("arena: interrupted; whatever finished is kept; run the same command again to resume", file=sys.stderr)
        code = 130  # as shells report a command ended by Ctrl-C: 128 + SIGINT
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # exiting now: a late Ctrl-C cannot change how it ends
    sys.exit(code)


if __name__ == "__main__":
    run()
