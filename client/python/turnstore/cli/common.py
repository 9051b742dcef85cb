"""What every client subcommand of ``turnstore`` shares.

The connection options, the client and the advice after a failure are in
:mod:`turnstore.cli.connection`.
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
import re
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, TextIO

from turnstore.cli.connection import (
    OptionFileError,
    UsageError,
    add_connection_options,
    advice,
    resolve_connection,
)
from turnstore.errors import TurnstoreError

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
