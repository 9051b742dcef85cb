"""What every client subcommand of ``turnstore`` shares.

:func:`add_connection_options` gives a subcommand's parser the options that
say how to reach the daemon (target, token, TLS), each also settable by an
environment variable; :func:`connect` builds the client from them.
:func:`run_async` runs a command's coroutine and turns failures into exit
statuses: 0 success, 1 the daemon or a file failed (or the user said no),
2 bad usage. :class:`Progress` is the progress line of long transfers.
:func:`printable` and :func:`printable_json` are how anything that came from
storage or the daemon reaches the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TextIO

from turnstore._auth import ClientTls
from turnstore._retry import NO_RETRY
from turnstore._tokenfile import AUTH_TOKEN_ENV, token_from_file_or_env
from turnstore._validate import check_target
from turnstore.client import DEFAULT_TARGET, TurnstoreClient
from turnstore.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    PermissionDeniedError,
    TurnstoreError,
    UnauthenticatedError,
    UnavailableError,
)

# Client-side environment variables. The client's own certificate has its
# own names: serve reads TURNSTORE_TLS_CERT/KEY as the daemon's certificate,
# and a probe run in the daemon's environment must not present that one.
TARGET_ENV: Final = "TURNSTORE_TARGET"
TOKEN_FILE_ENV: Final = "TURNSTORE_TOKEN_FILE"
TLS_CA_ENV: Final = "TURNSTORE_TLS_CA"
TLS_CERT_ENV: Final = "TURNSTORE_TLS_CLIENT_CERT"
TLS_KEY_ENV: Final = "TURNSTORE_TLS_CLIENT_KEY"
TLS_SERVER_NAME_ENV: Final = "TURNSTORE_TLS_SERVER_NAME"

# How often a progress line is redrawn.
PROGRESS_INTERVAL: Final = 0.5

# What a terminal may act on instead of showing: C0 controls (ESC starts
# OSC 52, which writes the clipboard, and line-erasing CSI codes; CR and
# BS overwrite), DEL, C1 controls (U+009B is a one-character CSI on some
# terminals), the line and paragraph separators, and the bidirectional
# embeddings, overrides and isolates, which reorder what follows them so
# that a line shows something else than it holds.
_UNSAFE_CHARS: Final = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_TERMINAL_UNSAFE: Final = re.compile(f"[{_UNSAFE_CHARS}]")
# The same with the backslash, escaped too in text so that an escape shown
# is never ambiguous (a literal backslash shows as two, as in Python's repr).
_TEXT_UNSAFE: Final = re.compile(rf"[\\{_UNSAFE_CHARS}]")
_SHORT_ESCAPES: Final = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


# The exit statuses of every client subcommand (docs/cli.md lists them).
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1  # the daemon or a file failed, or the user said no
EXIT_USAGE: Final = 2  # bad options or environment: nothing was sent
EXIT_INTERRUPTED: Final = 130

# The connection options read from the environment when not given: the
# attribute, its option and its variable (so that a message names the one used).
_FROM_ENVIRONMENT: Final = (
    ("target", "--target", TARGET_ENV),
    ("token_file", "--token-file", TOKEN_FILE_ENV),
    ("tls_ca", "--tls-ca", TLS_CA_ENV),
    ("tls_cert", "--tls-cert", TLS_CERT_ENV),
    ("tls_key", "--tls-key", TLS_KEY_ENV),
    ("tls_server_name", "--tls-server-name", TLS_SERVER_NAME_ENV),
)
_PATH_OPTIONS: Final = frozenset({"token_file", "tls_ca", "tls_cert", "tls_key"})

# What to do next, after each kind of failure (see advice()).
_START_DAEMON: Final = (
    "is the daemon running there? Start it with `turnstore serve` (`make run` in a "
    "clone of turnstore), or pass --target HOST:PORT or unix:PATH (or set "
    f"{TARGET_ENV}) to reach the one that is"
)
_GIVE_TOKEN: Final = (
    "the daemon requires a bearer token: pass --token-file FILE (or set "
    f"{TOKEN_FILE_ENV}, or {AUTH_TOKEN_ENV} to the token itself)"
)


class UsageError(Exception):
    """The command line or environment is inconsistent (exit status 2)."""


class OptionFileError(OSError):
    """A file named by an option cannot be read, or is not what it must be (exit status 1).

    The message names the option (or its environment variable), the path as
    the user gave it and the reason, without Python's ``[Errno N]``.
    """

    @classmethod
    def unreadable(cls, option: str, path: Path | str, error: OSError) -> OptionFileError:
        reason = (error.strerror or str(error)).lower()
        return cls(f"cannot read {option} {str(path)!r}: {reason}")


def add_connection_options(parser: argparse.ArgumentParser, *, inherited: bool = False) -> None:
    """Add ``--target``, ``--token-file`` and the ``--tls-*`` options to ``parser``.

    Each falls back to its environment variable (shown in ``--help``; read
    by :func:`resolve_connection`); the command line wins. ``inherited``
    (for the actions of ``history KEY``) leaves an option not given unset,
    so that one given before the action (to ``history KEY``) holds.
    """
    unset: Any = argparse.SUPPRESS if inherited else None
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        metavar="ADDR",
        default=unset,
        help=f"daemon address, HOST:PORT or unix:PATH [env {TARGET_ENV}; default {DEFAULT_TARGET}]",
    )
    group.add_argument(
        "--allow-remote",
        action="store_true",
        default=argparse.SUPPRESS if inherited else False,
        help="accept a target that is not loopback without TLS (the channel is insecure: "
        "only for a daemon run with --allow-remote on a network you trust)",
    )
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        default=unset,
        help=f"send the bearer token in this file's first line [env {TOKEN_FILE_ENV}; "
        f"{AUTH_TOKEN_ENV} may hold the token itself]",
    )
    group.add_argument(
        "--tls-ca",
        type=Path,
        metavar="PEM",
        default=unset,
        help=f"PEM CA bundle that signed the daemon's certificate: connect with TLS "
        f"[env {TLS_CA_ENV}]",
    )
    group.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PEM",
        default=unset,
        help=f"PEM certificate chain of this client, for mutual TLS [env {TLS_CERT_ENV}]",
    )
    group.add_argument(
        "--tls-key",
        type=Path,
        metavar="PEM",
        default=unset,
        help=f"PEM private key of --tls-cert [env {TLS_KEY_ENV}]",
    )
    group.add_argument(
        "--tls-server-name",
        metavar="NAME",
        default=unset,
        help=f"name to check the daemon's certificate against, instead of the target's host "
        f"[env {TLS_SERVER_NAME_ENV}]",
    )


def add_format_option(
    parser: argparse.ArgumentParser, what: str = "JSON lines", *, inherited: bool = False
) -> None:
    """Add ``--format auto|json|text`` (auto: text on a terminal, ``what`` when piped).

    ``inherited`` as for :func:`add_connection_options`.
    """
    parser.add_argument(
        "--format",
        choices=("auto", "json", "text"),
        default=argparse.SUPPRESS if inherited else "auto",
        help=f"output format; auto is text on a terminal, {what} otherwise",
    )


def as_json(args: argparse.Namespace) -> bool:
    """Whether to write JSON: asked for, or ``auto`` with stdout not a terminal."""
    return bool(args.format == "json" or (args.format == "auto" and not sys.stdout.isatty()))


def resolve_connection(args: argparse.Namespace) -> None:
    """Fill the connection options not given from the environment, then check the target.

    Records where each came from in ``args.option_source`` (the option, its
    environment variable, or ``the default target``) for messages. Raises
    UsageError for a target that is not ``HOST:PORT`` or ``unix:PATH`` (a
    port out of range, no port, a name without one: nothing is looked up or
    dialled) or not loopback without TLS or ``--allow-remote``; every client
    command, ``health`` included, goes through here first.
    """
    sources: dict[str, str] = {}
    for dest, option, variable in _FROM_ENVIRONMENT:
        value = getattr(args, dest, None)
        if value is not None:
            sources[dest] = option
        elif os.environ.get(variable):
            value = os.environ[variable]
            sources[dest] = variable
        setattr(args, dest, Path(value) if value is not None and dest in _PATH_OPTIONS else value)
    if args.target is None:
        args.target = DEFAULT_TARGET
        sources["target"] = "the default target"
    args.option_source = sources
    args.allow_remote = bool(getattr(args, "allow_remote", False))
    try:
        check_target(args.target, allow_remote=args.allow_remote or args.tls_ca is not None)
    except InvalidArgumentError as error:
        where = sources["target"]
        raise UsageError(str(error) if where == "--target" else f"{error} (from {where})") from None


def option_name(args: argparse.Namespace, dest: str, option: str) -> str:
    """``option``, or the environment variable that gave ``dest`` its value."""
    sources: dict[str, str] = getattr(args, "option_source", {})
    return sources.get(dest, option)


def _check_pem(args: argparse.Namespace, dest: str, option: str) -> None:
    """Raise OptionFileError unless the file of ``dest`` can be read and holds PEM data.

    Checked here so that the message names the option: grpc would log its
    own source files' names on stderr and fail the call as unavailable.
    """
    path: Path | None = getattr(args, dest)
    if path is None:
        return
    name = option_name(args, dest, option)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise OptionFileError.unreadable(name, path, error) from None
    if b"-----BEGIN" not in data:
        raise OptionFileError(f"{name} {str(path)!r} is not a PEM file (no -----BEGIN line)")


def client_tls(args: argparse.Namespace) -> ClientTls | None:
    """The TLS settings of the options, or None (plaintext) when no CA is given.

    Raises UsageError for a client certificate without its key (or the
    other way round), or either without a CA; OptionFileError naming the
    option for a file that cannot be read.
    """
    if args.tls_ca is None:
        if args.tls_cert is not None or args.tls_key is not None:
            raise UsageError(f"--tls-cert and --tls-key need --tls-ca (or {TLS_CA_ENV})")
        if args.tls_server_name:
            raise UsageError(f"--tls-server-name needs --tls-ca (or {TLS_CA_ENV})")
        return None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together (mutual TLS)")
    for dest, option in (
        ("tls_ca", "--tls-ca"),
        ("tls_cert", "--tls-cert"),
        ("tls_key", "--tls-key"),
    ):
        _check_pem(args, dest, option)
    return ClientTls(
        args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name
    )


def bearer_token(args: argparse.Namespace) -> str | None:
    """The token of ``--token-file`` (or its variables), or None.

    Raises OptionFileError naming the option for a file that cannot be read,
    UsageError for an empty one.
    """
    option = option_name(args, "token_file", "--token-file")
    try:
        return token_from_file_or_env(args.token_file)
    except OSError as error:
        raise OptionFileError.unreadable(option, args.token_file, error) from None
    except ValueError as error:
        raise UsageError(f"{option}: {error}; its first line must hold the token") from None


def connect(args: argparse.Namespace, timeout: float | None = 30.0) -> TurnstoreClient:
    """A client of the daemon the options name; construct it inside the event loop.

    Its calls are not retried (:data:`turnstore._retry.NO_RETRY`): every
    command tries once and says at once when the daemon cannot be reached
    (docs/cli.md, "Retries"); ``tail --follow`` reconnects by itself.
    """
    return TurnstoreClient(
        args.target,
        timeout=timeout,
        retry=NO_RETRY,
        token=bearer_token(args),
        tls=client_tls(args),
        allow_remote=args.allow_remote,
    )


def advice(error: TurnstoreError, args: argparse.Namespace) -> str | None:
    """What to do next after ``error``, naming the option that fixes it; None if nothing useful.

    Unreachable: start the daemon or pass ``--target`` (or check the TLS
    options, when TLS is on: a handshake failure looks the same).
    Unauthenticated: which token option. Permission denied: the token's
    scope. Deadline: the daemon is busy or the target is wrong. An error
    wrapping another (an import's TransferError at a line) is advised on
    by the one it wraps.
    """
    while isinstance(error.__cause__, TurnstoreError):
        error = error.__cause__
    target = printable(repr(args.target))
    if isinstance(error, UnavailableError):
        if getattr(args, "tls_ca", None) is not None:
            # A failed handshake looks the same as no daemon at all.
            return (
                f"{_START_DAEMON}; if a daemon runs at {target}, check that --tls-ca, "
                "--tls-cert, --tls-key and --tls-server-name match its TLS settings"
            )
        return _START_DAEMON
    if isinstance(error, UnauthenticatedError):
        if getattr(args, "token_file", None) is not None or os.environ.get(AUTH_TOKEN_ENV):
            given = (
                option_name(args, "token_file", "--token-file")
                if args.token_file is not None
                else AUTH_TOKEN_ENV
            )
            return (
                f"the daemon refused the token from {given}: pass the token of the "
                "daemon's --auth-token-file with --token-file FILE (or set "
                f"{TOKEN_FILE_ENV}, or {AUTH_TOKEN_ENV} to the token itself)"
            )
        return _GIVE_TOKEN
    if isinstance(error, PermissionDeniedError):
        return (
            "the token's scope does not allow this: pass a token whose scope does "
            "with --token-file FILE (daemon-wide commands need a full-scope token)"
        )
    if isinstance(error, DeadlineExceededError):
        return f"the daemon at {target} did not answer in time: is it overloaded or stuck?"
    return None


def format_time(unix_nanos: int) -> str:
    """RFC 3339 in UTC with ``Z``, to the millisecond; ``-`` for 0 (unknown)."""
    if not unix_nanos:
        return "-"
    moment = datetime.fromtimestamp(unix_nanos / 1e9, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_size(value: int | float) -> str:
    """``512 bytes``, ``1.5 KiB``, ``12.0 MiB``, ``3.2 GiB``."""
    amount = float(value)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def confirm(question: str, yes: bool) -> bool:
    """True with ``--yes``; else ask on the terminal (stderr prompt, stdin answer).

    Raises UsageError when stdin is not a terminal: nobody can answer, and a
    destructive command in a script must say ``--yes`` explicitly.
    """
    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError("stdin is not a terminal: pass --yes to confirm")
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


class Progress:
    """A progress line on stderr, redrawn every :data:`PROGRESS_INTERVAL` s.

    Only on a terminal: with stderr piped it draws nothing. Use as
    ``async with``; add to ``events`` and ``bytes`` as work is done (or give
    ``sample``, called before each draw, to update them). ``total_bytes``
    adds a percentage. On exit the line is drawn once more and ended.
    """

    def __init__(
        self,
        verb: str,
        *,
        unit: str | None = "events",
        total_bytes: int | None = None,
        sample: Callable[[Progress], None] | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.verb = verb
        self.unit = unit
        self.total_bytes = total_bytes
        self.events = 0
        self.bytes = 0
        self._sample = sample
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = self._stream.isatty()
        self._started = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None

    def line(self) -> str:
        """The text of the progress line as of now."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        parts = [self.verb]
        if self.unit is not None:
            parts.append(f"{self.events:,} {self.unit},")
        size = format_size(self.bytes)
        if self.total_bytes:
            size += f" of {format_size(self.total_bytes)}"
            size += f" ({min(100.0, 100.0 * self.bytes / self.total_bytes):.0f}%)"
        parts.append(size)
        rate = f"{format_size(self.bytes / elapsed)}/s"
        if self.unit is not None:
            rate = f"{self.events / elapsed:,.0f} {self.unit}/s, " + rate
        parts.append(f"in {elapsed:.1f} s ({rate})")
        return " ".join(parts)

    def _draw(self) -> None:
        if self._sample is not None:
            with contextlib.suppress(OSError):
                self._sample(self)
        self._stream.write("\r" + self.line() + "\x1b[K")
        self._stream.flush()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            self._draw()

    async def __aenter__(self) -> Progress:
        self._started = time.monotonic()
        if self.enabled:
            self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self.enabled:
            self._draw()
            self._stream.write("\n")
            self._stream.flush()


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def printable(text: str, *, backslash: bool = True) -> str:
    """``text`` with what a terminal would act on shown escaped, for text output.

    Everything the CLI prints that came from storage or the daemon (thread
    ids, event types, conversation keys, content types, the daemon's error
    messages) goes through here. Escaped: C0 controls including ESC, DEL,
    C1 controls, U+2028/U+2029 and the bidirectional controls U+202A-U+202E
    and U+2066-U+2069; as in Python's repr, ``\\n``, ``\\r``, ``\\t``,
    ``\\x1b``, ``\\x9b``, ``\\u202e``. A backslash shows as two, so that an
    escape shown is never a literal one, unless ``backslash`` is False (for
    messages whose parts are already ``repr``-quoted). Other characters,
    emoji and their joiners included, are shown as they are.
    """
    unsafe = _TEXT_UNSAFE if backslash else _TERMINAL_UNSAFE
    return unsafe.sub(_escape, text)


def printable_json(data: bytes | str) -> str:
    """Encoded JSON with DEL, C1, separator and bidi characters as ``\\uXXXX``.

    orjson (and ``json.dumps``) escape the C0 controls but write DEL, C1 and
    the bidirectional controls as they are; those occur only inside JSON
    strings, where ``\\uXXXX`` means the same character, so the output is
    the same JSON value and safe on a terminal. ``data`` is UTF-8 JSON text.
    """
    text = data.decode() if isinstance(data, bytes) else data
    return _TERMINAL_UNSAFE.sub(_json_escape, text)


def fail(command: str, message: str, next_step: str | None = None) -> None:
    """Print ``turnstore COMMAND: MESSAGE`` on stderr, its control characters escaped.

    Messages echo ids (their own ``repr`` or the daemon's text): only what a
    terminal would act on is escaped here, not backslashes. ``next_step``
    (what to do about it) goes on a second, indented line.
    """
    print(f"turnstore {command}: {printable(message, backslash=False)}", file=sys.stderr)
    if next_step is not None:
        print(f"  {printable(next_step, backslash=False)}", file=sys.stderr)


def warn(command: str, message: str) -> None:
    """Print ``turnstore COMMAND: warning: MESSAGE`` on stderr (the command goes on)."""
    fail(command, f"warning: {message}")


def run_async(
    args: argparse.Namespace, command: Callable[[argparse.Namespace], Awaitable[int]]
) -> int:
    """Run ``command(args)`` in a new event loop; its exit status.

    A TurnstoreError or an OSError (a file) is printed and gives 1; a
    UsageError or ValueError (inconsistent options) gives 2; Ctrl-C gives
    130. BrokenPipeError goes up to :func:`turnstore.cli.main.main`, which ends
    quietly (the reader, e.g. ``head``, has what it wanted).
    """
    name = args.command
    try:
        resolve_connection(args)
        return asyncio.run(_awaited(command, args))
    except BrokenPipeError:
        raise
    except TurnstoreError as error:
        fail(name, f"{type(error).__name__}: {error}", advice(error, args))
        return EXIT_FAILED
    except UnicodeDecodeError as error:
        fail(name, f"not UTF-8: {error}")
        return EXIT_FAILED
    except (UsageError, ValueError) as error:
        fail(name, str(error))
        return EXIT_USAGE
    except OSError as error:
        fail(name, _os_message(error))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _os_message(error: OSError) -> str:
    """``error`` without Python's ``[Errno N]`` prefix: the reason and the file's name."""
    if error.strerror is None or isinstance(error, OptionFileError):
        return str(error)
    if error.filename is not None:
        return f"{str(error.filename)!r}: {error.strerror.lower()}"
    return error.strerror


async def _awaited(
    command: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace
) -> int:
    return await command(args)


def handle(
    parser: argparse.ArgumentParser, command: Callable[[argparse.Namespace], Awaitable[int]]
) -> None:
    """Make ``command`` the coroutine ``turnstore.cli.main.main`` runs for this subcommand."""
    parser.set_defaults(run=lambda args: run_async(args, command))


def add_parser(
    commands: Any, name: str, help: str, description: str, *, inherited: bool = False
) -> argparse.ArgumentParser:
    """A subcommand's parser with the connection options (``inherited``: see there)."""
    parser: argparse.ArgumentParser = commands.add_parser(name, help=help, description=description)
    add_connection_options(parser, inherited=inherited)
    return parser


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number at least ``minimum``, else a message saying so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value

    return parse


def seconds(text: str) -> float:
    """An argparse ``type``: a number of seconds above 0 (finite)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds above 0")
    return value
