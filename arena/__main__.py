"""``python -m arena`` and the ``arena`` console script: the command line, with Ctrl-C handled from its first line.

One Ctrl-C ends the arena the same way wherever it lands (imports, training, an attack batch, a store write, Ray
start-up, the exit itself): one line on stderr, every finished matchup kept, exit status 130. Two gaps let it die by
the signal instead (status -2 to ``subprocess``): a ``KeyboardInterrupt`` raised outside ``arena.cli.main`` (while
torch imports, or after ``main`` returned), which Python turns into death by SIGINT; and a second SIGINT during the
stop or the interpreter's shutdown, where Python has put the default action back. So SIGINT is answered here before
anything heavy is imported, and the first one stops the arena while every later one is ignored. A third gap is
CPython's own: under ``python -m``, a Ctrl-C that lands while a library runs ``exec`` on a string makes the
interpreter kill itself by SIGINT at exit even though the arena caught it; so an interrupted run ends with
``os._exit(130)`` once everything else registered to run at exit has run.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from types import FrameType


def _stop(signum: int, frame: FrameType | None) -> None:
    """The first SIGINT: ignore every later one (the stop and the exit are short), then stop the work."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


#: The exit status ``run`` settled on, read by ``_exit_interrupted``.
_status = 0


def _exit_interrupted() -> None:
    """Run last at exit (registered first): make an interrupted run's status 130 whatever the interpreter decides."""
    if _status == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


def run() -> None:
    """Entry point of the ``arena`` console script: exit 2 on bad input, 1 when a matchup failed, 130 on Ctrl-C."""
    global _status
    signal.signal(signal.SIGINT, _stop)
    atexit.register(_exit_interrupted)
    try:
        from arena.cli import main  # torch and the plugins: seconds, during which Ctrl-C must work as everywhere

        code = main()
    except KeyboardInterrupt:  # before ``main`` began to handle it, or after it returned
        print("arena: interrupted; whatever finished is kept; run the same command again to resume", file=sys.stderr)
        code = 130  # as shells report a command ended by Ctrl-C: 128 + SIGINT
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # exiting now: a late Ctrl-C cannot change how it ends
    _status = code
    sys.exit(code)


if __name__ == "__main__":
    run()
