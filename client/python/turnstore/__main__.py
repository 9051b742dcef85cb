"""``python -m turnstore``: the same as the ``turnstore`` command."""

from turnstore.cli.main import main

raise SystemExit(main())
