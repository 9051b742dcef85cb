"""``turnstore tail``, ``threads``, ``turns`` and ``clear``; ``health`` too.

:func:`add_event_commands` adds them to the ``turnstore`` command's
subparsers (``health`` from :mod:`turnstore.cli.health`); each parser's
``run`` default runs it (see :func:`turnstore.cli.common.handle`). They need
only the client install.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import time
from typing import Any, Final

from turnstore import _json
from turnstore.cli.common import (
    add_format_option,
    add_parser,
    as_json,
    confirm,
    fail,
    format_time,
    handle,
    printable,
    printable_json,
    seconds,
    warn,
    whole_number,
)
from turnstore.cli.connection import connect
from turnstore.cli.health import add_health_command
from turnstore.errors import EventFormatError, FollowerTooSlowError, UnavailableError
from turnstore.replay import CaughtUp, ReplayItem, ThreadCleared, TurnFinished
from turnstore.results import StoredEvent

# `tail --follow` reconnects after a broken stream with this back-off.
_RECONNECT_FIRST_DELAY: Final = 0.1
_RECONNECT_MAX_DELAY: Final = 0.5
# Said of a thread id that holds nothing: the store cannot tell a thread never
# written from one cleared (or one outside the token's scope).
_NO_SUCH_THREAD: Final = (
    "unknown, cleared, or outside the token's scope (`turnstore threads` lists the threads)"
)

# A replay ended as too slow is resumed at once, this many times in a row at
# most without anything printed in between.
_TOO_SLOW_RESUMES: Final = 5


def _event_json(item: StoredEvent) -> dict[str, Any]:
    record: dict[str, Any] = {"position": item.position, "turn": item.turn}
    try:
        if item.message is not None and _json.too_deep(item.message.envelope.body):
            # Stored by an older daemon, past today's limit: shown as stored.
            raise EventFormatError("nested deeper than the limit")
        record.update(item.envelope.to_json_dict())
    except EventFormatError:
        # Not a JSON object (another content type): show it as stored.
        assert item.message is not None
        envelope = item.message.envelope
        record.update(
            event_id=envelope.event_id,
            sequence=envelope.sequence,
            timestamp=envelope.timestamp,
            type=envelope.type,
            content_type=envelope.content_type,
            body_base64=base64.b64encode(envelope.body).decode("ascii"),
        )
    return record


def _line(record: dict[str, Any]) -> str:
    return printable_json(_json.dumps(record))


def format_item(item: ReplayItem, json_lines: bool) -> str:
    """One line of ``turnstore tail``: a JSON object, or readable text.

    Either way, control characters from storage are escaped (see
    :func:`turnstore.cli.common.printable`): JSON keeps its meaning, text
    shows the event type with ``printable`` and the rest as escaped JSON.
    """
    if isinstance(item, StoredEvent):
        record = _event_json(item)
        if json_lines:
            return _line(record)
        skip = ("position", "turn", "event_id", "sequence", "timestamp", "type")
        body = _line({k: v for k, v in record.items() if k not in skip})
        return f"#{item.position} turn {item.turn} {printable(str(record['type']))} {body}"
    if isinstance(item, TurnFinished):
        if json_lines:
            return _line(
                {
                    "marker": "turn_finished",
                    "turn": item.turn,
                    "event_count": item.event_count,
                    "last_position": item.last_position,
                }
            )
        return f"-- turn {item.turn} finished ({item.event_count} events)"
    if isinstance(item, CaughtUp):
        if json_lines:
            return _line({"marker": "caught_up", "next_position": item.next_position})
        return f"-- caught up (next position {item.next_position})"
    if json_lines:
        return _line({"marker": "thread_cleared", "next_position": item.next_position})
    return "-- the thread was cleared"


async def _tail(args: argparse.Namespace) -> int:
    json_lines = as_json(args)
    after, epoch = args.after, None
    printed_finishes: set[int] = set()
    caught_up = False
    unavailable_since: float | None = None
    delay = _RECONNECT_FIRST_DELAY
    ended_without_progress = 0
    async with connect(args, timeout=None) as client:
        while True:
            replay = client.events.replay(
                args.thread, after, follow=args.follow, epoch=epoch, decode=False
            )
            try:
                async with replay:
                    async for item in replay:
                        unavailable_since, delay = None, _RECONNECT_FIRST_DELAY
                        ended_without_progress = 0
                        # A resumed replay may repeat the markers at its cursor.
                        if isinstance(item, TurnFinished):
                            if item.turn in printed_finishes:
                                continue
                            printed_finishes.add(item.turn)
                        elif isinstance(item, CaughtUp):
                            if caught_up:
                                continue
                            caught_up = True
                            if item.next_position == 0 and not args.follow:
                                warn(
                                    "tail",
                                    f"thread {args.thread!r} has no events: {_NO_SUCH_THREAD}",
                                )
                        print(format_item(item, json_lines), flush=True)
                        if isinstance(item, ThreadCleared):
                            return 0
                return 0
            except FollowerTooSlowError:
                # The daemon ended this replay for reading too slowly (this
                # process's stdout was not read): go on where it stopped,
                # unless it keeps happening with nothing printed in between.
                ended_without_progress += 1
                if ended_without_progress > _TOO_SLOW_RESUMES:
                    raise
                after, epoch = replay.last_position, replay.epoch
                resume = "the start" if after is None else f"position {after}"
                fail("tail", f"the daemon ended the replay as too slow; resuming after {resume}")
                continue
            except UnavailableError as error:
                if not args.follow:
                    raise
                after, epoch = replay.last_position, replay.epoch
                now = time.monotonic()
                if unavailable_since is None:
                    unavailable_since = now
                    resume = "the start" if after is None else f"position {after}"
                    fail("tail", f"daemon unavailable ({error}); resuming after {resume}")
                elif now - unavailable_since >= args.reconnect_for:
                    resume = "" if after is None else f" (resume with --after {after})"
                    fail(
                        "tail",
                        f"gave up: the daemon at {args.target} was unavailable for "
                        f"{args.reconnect_for:g} s{resume}",
                    )
                    return 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECONNECT_MAX_DELAY)


async def _threads(args: argparse.Namespace) -> int:
    json_lines = as_json(args)
    shown = 0
    last: str | None = None
    async with connect(args) as client:
        async for thread in client.admin.list_threads(args.start_after):
            if args.limit is not None and shown >= args.limit:
                if not json_lines and last is not None:
                    print(f"-- more: turnstore threads --start-after {last!r}", file=sys.stderr)
                break
            if json_lines:
                record = {
                    "thread_id": thread.thread_id,
                    "event_count": thread.event_count,
                    "finished_turns": thread.finished_turns,
                    "last_write": format_time(thread.last_write_unix_nanos),
                    "last_write_unix_nanos": thread.last_write_unix_nanos,
                }
                print(_line(record))
            else:
                print(
                    f"{printable(thread.thread_id)}  {thread.event_count} events  "
                    f"{thread.finished_turns} finished turns  "
                    f"last write {format_time(thread.last_write_unix_nanos)}"
                )
            shown += 1
            last = thread.thread_id
    sys.stdout.flush()
    return 0


async def _turns(args: argparse.Namespace) -> int:
    json_lines = as_json(args)
    async with connect(args) as client:
        turns = await client.events.get_turns(args.thread)
    for turn in turns:
        if json_lines:
            record: dict[str, Any] = {
                "turn": turn.turn,
                "finished": turn.finished,
                "event_count": len(turn.events),
            }
            if args.events:
                record["events"] = [envelope.to_json_dict() for envelope in turn.events]
            print(_line(record))
            continue
        state = "finished" if turn.finished else "open"
        print(f"turn {turn.turn}  {state}  {len(turn.events)} events")
        if args.events:
            for envelope in turn.events:
                fields = {k: v for k, v in envelope.event.items() if k != "type"}
                print(f"  {printable(envelope.type)} {_line(fields)}")
    if not turns:
        # On stderr whatever the format: a typo in the id must not pass as
        # an empty thread unnoticed in a script either.
        warn("turns", f"thread {args.thread!r} has no events: {_NO_SUCH_THREAD}")
    return 0


async def _clear(args: argparse.Namespace) -> int:
    """Clear the thread; a thread without events is warned about (exit 0: nothing is left)."""
    async with connect(args) as client:
        count = await client.events.event_count(args.thread)
        if count == 0:
            warn("clear", f"thread {args.thread!r} has no events: {_NO_SUCH_THREAD}")
        # Asked even so: a script without --yes fails the same whatever the thread holds.
        if not confirm(f"Clear thread {args.thread!r} ({count} events)?", args.yes):
            fail("clear", "not cleared")
            return 1
        # Cleared even so: an event appended since the count goes too.
        await client.events.clear(args.thread)
    if count:
        print(f"cleared thread {args.thread!r}", file=sys.stderr)
    return 0


def add_event_commands(commands: Any) -> None:
    """Add ``health``, ``tail``, ``threads``, ``turns`` and ``clear`` to ``commands``."""
    add_health_command(commands)
    tail = add_parser(
        commands,
        "tail",
        help="print a thread's events as they arrive",
        description=(
            "Print a thread's events: one JSON object a line when piped, readable "
            "lines on a terminal. Markers (turn finished, caught up, cleared) are "
            "printed too. Ends when caught up unless --follow is given; a follow "
            "survives a daemon restart (it resumes after the last event printed, "
            "each event printed once) and ends when the thread is cleared."
        ),
    )
    tail.add_argument("thread", help="the thread id")
    tail.add_argument(
        "--after",
        type=whole_number(0),
        default=None,
        metavar="N",
        help="start after this position (0 or more)",
    )
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    tail.add_argument(
        "--reconnect-for",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="with --follow: give up when the daemon stays unavailable this long (default 30)",
    )
    add_format_option(tail)
    handle(tail, _tail)

    threads = add_parser(
        commands,
        "threads",
        help="list the threads",
        description=(
            "List every thread (id, events, finished turns, last write) in the byte "
            "order of the ids: one JSON object a line when piped. --start-after ID "
            "goes on after a listing that stopped (e.g. at --limit)."
        ),
    )
    threads.add_argument("--start-after", default="", metavar="ID", help="list after this id")
    threads.add_argument(
        "--limit", type=whole_number(1), metavar="N", help="list at most this many (1 or more)"
    )
    add_format_option(threads)
    handle(threads, _threads)

    turns = add_parser(
        commands,
        "turns",
        help="show a thread's turns",
        description=(
            "Print each turn of a thread in turn order: its number, whether it is "
            "finished, its event count (and, with --events, its events)."
        ),
    )
    turns.add_argument("thread", help="the thread id")
    turns.add_argument("--events", action="store_true", help="print each turn's events too")
    add_format_option(turns)
    handle(turns, _turns)

    clear = add_parser(
        commands,
        "clear",
        help="remove everything of a thread",
        description=(
            "Clear a thread: its events and turns are removed, and its next append "
            "starts again at position 0. Asks for confirmation on a terminal; "
            "without a terminal (a script) it needs --yes."
        ),
    )
    clear.add_argument("thread", help="the thread id")
    clear.add_argument("--yes", "-y", action="store_true", help="do not ask")
    handle(clear, _clear)
