"""``python -m turnstore``: the same as the ``turnstore`` command."""

from turnstore.cli import main

raise SystemExit(main())
