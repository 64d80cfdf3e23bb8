"""``python -m arena`` runs the command line, like the ``arena`` console script."""

from arena.cli import main

raise SystemExit(main())
