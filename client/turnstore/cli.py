"""The ``turnstore`` command line.

``turnstore serve`` runs the daemon; it needs the ``server`` extra
(``pip install 'turnstore[server]'``). ``turnstore tail`` prints a thread's
events as they arrive and needs only the client.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from turnstore.client import DEFAULT_TARGET, StoredEvent, TurnstoreClient
from turnstore.errors import TurnstoreError
from turnstore.streams import CaughtUp, ReplayItem, TurnFinished

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """Parse ``123``, ``64MiB``, ``16G`` (binary units) into bytes."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 512MiB or 16GiB)")
    unit = (match.group(2) or "")[:1].lower()
    return int(match.group(1)) * _UNITS[unit]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnstore", description="A durable store for AI agent event streams."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the daemon",
        description="Run the turnstore daemon until SIGTERM or SIGINT.",
    )
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=Path("turnstore-data"),
        help="directory of the LMDB database (default: ./turnstore-data)",
    )
    serve.add_argument(
        "--listen",
        action="append",
        metavar="ADDR",
        help=f"HOST:PORT or unix:PATH; repeatable (default: {DEFAULT_TARGET})",
    )
    serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow listen addresses that are not loopback (no access control yet)",
    )
    serve.add_argument(
        "--max-db-size",
        type=parse_size,
        default="16GiB",
        help="ceiling of the database size; writes past it fail (default: 16GiB)",
    )
    limits = serve.add_argument_group(
        "limits", "each enforced with INVALID_ARGUMENT naming the field and the limit"
    )
    limits.add_argument(
        "--max-thread-id-bytes", type=int, default=256, help="UTF-8 bytes (max 511; default 256)"
    )
    limits.add_argument(
        "--max-key-bytes",
        type=int,
        default=256,
        help="conversation key UTF-8 bytes (max 511; default 256)",
    )
    limits.add_argument(
        "--max-event-bytes",
        type=parse_size,
        default="1MiB",
        help="one encoded event envelope (default 1MiB)",
    )
    limits.add_argument(
        "--max-events-per-append", type=int, default=10_000, help="events per call (default 10000)"
    )
    limits.add_argument(
        "--max-snapshot-bytes",
        type=parse_size,
        default="32MiB",
        help="one snapshot (default 32MiB)",
    )
    serve.add_argument(
        "--snapshot-versions",
        type=int,
        default=4,
        help="snapshot versions kept per conversation key, the latest included (default 4)",
    )
    serve.add_argument(
        "--log-format", choices=("auto", "json", "console"), default="auto", help="log output"
    )
    serve.add_argument("--log-level", default="info", help="debug, info, warning or error")

    tail = commands.add_parser(
        "tail",
        help="print a thread's events as they arrive",
        description=(
            "Print a thread's events: one JSON object a line when piped, readable "
            "lines on a terminal. Markers (turn finished, caught up, cleared) are "
            "printed too. Ends when caught up unless --follow is given."
        ),
    )
    tail.add_argument("thread", help="the thread id")
    tail.add_argument("--after", type=int, default=None, help="start after this position")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    tail.add_argument(
        "--target", default=DEFAULT_TARGET, help=f"daemon address (default: {DEFAULT_TARGET})"
    )
    tail.add_argument(
        "--format",
        choices=("auto", "json", "text"),
        default="auto",
        help="output format; auto is text on a terminal, JSON lines otherwise",
    )
    return parser


def _serve(args: argparse.Namespace) -> int:
    try:
        from turnstore.server.app import ServerConfig, serve
        from turnstore.server.engine import EngineConfig, Limits
        from turnstore.server.errors import DataDirLockedError
        from turnstore.server.logs import configure_logging
    except ImportError as error:
        print(
            f"turnstore serve needs the server extra: pip install 'turnstore[server]' ({error})",
            file=sys.stderr,
        )
        return 2
    import structlog

    configure_logging(args.log_format, args.log_level)
    log = structlog.get_logger("turnstore")
    try:
        engine_config = EngineConfig(
            data_dir=args.data_dir.resolve(),
            initial_map_bytes=min(64 << 20, args.max_db_size),
            max_map_bytes=args.max_db_size,
            limits=Limits(
                max_thread_id_bytes=args.max_thread_id_bytes,
                max_key_bytes=args.max_key_bytes,
                max_event_bytes=args.max_event_bytes,
                max_events_per_append=args.max_events_per_append,
                max_snapshot_bytes=args.max_snapshot_bytes,
            ),
            snapshot_versions_kept=args.snapshot_versions,
        )
        config = ServerConfig(
            engine=engine_config,
            listen=tuple(args.listen or (DEFAULT_TARGET,)),
            allow_remote=args.allow_remote,
        )
        asyncio.run(serve(config))
    except (DataDirLockedError, ValueError, RuntimeError, OSError) as error:
        log.error("cannot_serve", error=str(error))
        return 1
    return 0


def _format_item(item: ReplayItem, as_json: bool) -> str:
    if isinstance(item, StoredEvent):
        if as_json:
            record = {"position": item.position, "turn": item.turn}
            record.update(item.envelope.to_json_dict())
            return json.dumps(record, ensure_ascii=False)
        fields = {k: v for k, v in item.envelope.event.items() if k != "type"}
        body = json.dumps(fields, ensure_ascii=False)
        return f"#{item.position} turn {item.turn} {item.envelope.type} {body}"
    if isinstance(item, TurnFinished):
        if as_json:
            return json.dumps({"marker": "turn_finished", **dataclasses.asdict(item)})
        return f"-- turn {item.turn} finished ({item.event_count} events)"
    if isinstance(item, CaughtUp):
        if as_json:
            return json.dumps({"marker": "caught_up", **dataclasses.asdict(item)})
        return f"-- caught up (next position {item.next_position})"
    if as_json:
        return json.dumps({"marker": "thread_cleared", **dataclasses.asdict(item)})
    return "-- the thread was cleared"


async def _tail(args: argparse.Namespace) -> int:
    as_json = args.format == "json" or (args.format == "auto" and not sys.stdout.isatty())
    async with TurnstoreClient(args.target, timeout=None) as client:
        replay = client.events.replay(args.thread, args.after, follow=args.follow)
        async with replay:
            async for item in replay:
                print(_format_item(item, as_json), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "tail":
        try:
            return asyncio.run(_tail(args))
        except TurnstoreError as error:
            print(f"turnstore tail: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    raise AssertionError(f"unhandled command {args.command}")  # pragma: no cover
