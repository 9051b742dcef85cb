"""The ``turnstore`` command line.

``turnstore serve`` runs the daemon; it needs the ``server`` extra
(the wheel installed with ``[server]``). Its options and its configuration
belong to the server (:mod:`turnstore.server.daemon.options`,
:mod:`turnstore.server.daemon.command`); this module only parses them and hands
them over. Every other subcommand is a client of a running daemon and needs
only the client: :mod:`turnstore.cli.health`, :mod:`turnstore.cli.events` (tail,
threads, turns, clear), :mod:`turnstore.cli.history` (conversations, history) and
:mod:`turnstore.cli.admin` (backup, stats, export, import);
:mod:`turnstore.cli.connection` holds their connection options.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from turnstore._version import package_version
from turnstore.cli.admin import add_admin_commands
from turnstore.cli.events import add_event_commands
from turnstore.cli.history import add_history_commands

# turnstore is not on PyPI yet: the extra is installed from a wheel or a clone.
_NEEDS_SERVER = (
    "turnstore serve needs the server extra, which is not installed ({error}). "
    "Install turnstore with it: pip install 'turnstore-{version}-py3-none-any.whl[server]' "
    "from a built wheel, or pip install '.[server]' in a clone"
)


class _PrintVersion(argparse.Action):
    """``--version``: print ``turnstore <version>`` and exit 0.

    The version is looked up only when asked for (argparse's own ``version``
    action wants it as a string up front, which every command would pay for).
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(
            option_strings,
            dest=argparse.SUPPRESS,
            default=argparse.SUPPRESS,
            nargs=0,
            help="print the version of turnstore and exit",
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        print(f"turnstore {package_version()}")
        parser.exit(0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnstore", description="A durable store for AI agent event streams."
    )
    parser.add_argument("--version", action=_PrintVersion)
    commands = parser.add_subparsers(dest="command", required=True)
    add_event_commands(commands)
    add_history_commands(commands)
    add_admin_commands(commands)
    serve = commands.add_parser(
        "serve",
        help="run the daemon",
        description="Run the turnstore daemon until SIGTERM or SIGINT.",
    )
    serve.add_argument("--version", action=_PrintVersion)
    try:
        from turnstore.server.daemon.options import add_serve_arguments
    except ImportError:
        # No server package at all: main() lets serve take any options, so
        # that it says what is missing rather than naming an unknown option.
        serve.set_defaults(serve_options_unknown=True)
    else:
        add_serve_arguments(serve)
    return parser


def _serve(args: argparse.Namespace) -> int:
    """Run the daemon with the parsed options (see turnstore.server.daemon.command)."""
    try:
        from turnstore.server.daemon import command
    except ImportError as error:
        print(_NEEDS_SERVER.format(error=error, version=package_version()), file=sys.stderr)
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
