"""The ``turnstore`` command line.

``turnstore serve`` runs the daemon; it needs the ``server`` extra
(``pip install 'turnstore[server]'``). Its options and its configuration
belong to the server (:mod:`turnstore.server.options`,
:mod:`turnstore.server.command`); this module only parses them and hands
them over. Every other subcommand is a client of a running daemon and needs
only the client: :mod:`turnstore.cli_events` (health, tail, threads, turns,
clear), :mod:`turnstore.cli_history` (conversations, history) and
:mod:`turnstore.admin_cli` (backup, stats, export, import);
:mod:`turnstore.cli_common` holds their connection options.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from turnstore.admin_cli import add_admin_commands
from turnstore.cli_events import add_event_commands
from turnstore.cli_history import add_history_commands

_NEEDS_SERVER = "turnstore serve needs the server extra: pip install 'turnstore[server]'"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnstore", description="A durable store for AI agent event streams."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_event_commands(commands)
    add_history_commands(commands)
    add_admin_commands(commands)
    serve = commands.add_parser(
        "serve",
        help="run the daemon",
        description="Run the turnstore daemon until SIGTERM or SIGINT.",
    )
    try:
        from turnstore.server.options import add_serve_arguments
    except ImportError:
        # No server package at all: main() lets serve take any options, so
        # that it says what is missing rather than naming an unknown option.
        serve.set_defaults(serve_options_unknown=True)
    else:
        add_serve_arguments(serve)
    return parser


def _serve(args: argparse.Namespace) -> int:
    """Run the daemon with the parsed options (see turnstore.server.command)."""
    try:
        from turnstore.server import command
    except ImportError as error:
        print(f"{_NEEDS_SERVER} ({error})", file=sys.stderr)
        return 2
    return command.run(args)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status.

    A closed stdout (``turnstore tail ... | head -1``) ends the command
    quietly with status 0: the reader has what it wanted.
    """
    parser = _parser()
    args, unrecognized = parser.parse_known_args(argv)
    if unrecognized and not getattr(args, "serve_options_unknown", False):
        parser.error(f"unrecognized arguments: {' '.join(unrecognized)}")
    try:
        if args.command == "serve":
            return _serve(args)
        status: int = args.run(args)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        _quiet_stdout()
        return 0
