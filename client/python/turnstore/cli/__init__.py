"""The ``turnstore`` command line.

:mod:`turnstore.cli.main` parses the command line and runs a subcommand (the
``turnstore`` entry point and ``python -m turnstore``); ``serve`` is handed to
the daemon's package. The client subcommands live by theme:
:mod:`turnstore.cli.health`, :mod:`turnstore.cli.events` (tail, threads, turns, clear),
:mod:`turnstore.cli.history` (conversations, history) and
:mod:`turnstore.cli.admin` (backup, stats, export, import);
:mod:`turnstore.cli.connection` holds their connection options and the
advice after a failure, :mod:`turnstore.cli.common` their output and exit
statuses. Nothing here is part of the Python API.
"""
