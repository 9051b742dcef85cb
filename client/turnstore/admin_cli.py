"""The operations commands of ``turnstore``: backup, stats, export, import.

:func:`add_admin_commands` adds them to the ``turnstore`` command's
subparsers and :func:`run_admin_command` runs one (it returns None for any
other command). ``python -m turnstore.admin_cli`` runs them on their own.
Each talks to a running daemon (``--target``, default
``127.0.0.1:7070``) through :class:`turnstore.admin.GrpcAdmin`, sending the
bearer token of ``TURNSTORE_AUTH_TOKEN`` when it is set. Exit status: 0 on
success, 1 when the daemon or a file fails, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any, Final

from turnstore.admin import DaemonStats, GrpcAdmin
from turnstore.client import DEFAULT_TARGET, TurnstoreClient
from turnstore.errors import TurnstoreError

COMMANDS: Final = ("backup", "stats", "export", "import")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", default=DEFAULT_TARGET, help=f"daemon address (default: {DEFAULT_TARGET})"
    )


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=("auto", "json", "text"),
        default="auto",
        help="output format; auto is text on a terminal, JSON otherwise",
    )


def add_admin_commands(commands: Any) -> None:
    """Add ``backup``, ``stats``, ``export`` and ``import`` to ``commands``.

    ``commands`` is the object ``ArgumentParser.add_subparsers`` returned
    (its ``dest`` must be ``"command"``).
    """
    backup = commands.add_parser(
        "backup",
        help="copy the database of a running daemon",
        description=(
            "Have the daemon write a consistent, compacted copy of its database to DEST "
            "while it goes on serving. DEST is a path on the daemon's host (a relative "
            "one is made absolute here); it must not exist or be an empty directory, and "
            "its parent must exist. `turnstore serve --data-dir DEST` serves the copy."
        ),
    )
    backup.add_argument("dest", help="directory to create on the daemon's host")
    _add_common(backup)
    _add_format(backup)

    stats = commands.add_parser(
        "stats",
        help="print what a daemon stores and its counters",
        description=(
            "Print threads, events, turns, conversations, snapshot versions, the size "
            "of the database file, replay and retention counters: readable text on a "
            "terminal, one JSON object when piped."
        ),
    )
    _add_common(stats)
    _add_format(stats)

    export = commands.add_parser(
        "export",
        help="write every thread and snapshot as JSON lines",
        description=(
            "Write every thread (its events and finished turns, in position order) and "
            "the latest snapshot of every conversation key as JSON lines (the format is "
            "in docs/operations.md). Threads are read one after the other while the "
            "daemon serves; for one point in time, take a backup."
        ),
    )
    _add_common(export)
    export.add_argument(
        "--output", "-o", type=Path, help="file to write (default: stdout); replaced when done"
    )

    import_ = commands.add_parser(
        "import",
        help="append the threads and snapshots of an export",
        description=(
            "Read an export's JSON lines and append its events, finish its finished "
            "turns and save its snapshots. Positions are assigned by the target; event "
            "ids make it safe to run the same import again."
        ),
    )
    _add_common(import_)
    import_.add_argument("--input", "-i", type=Path, help="file to read (default: stdin)")
    _add_format(import_)


def _as_json(args: argparse.Namespace) -> bool:
    return bool(args.format == "json" or (args.format == "auto" and not sys.stdout.isatty()))


def _client(args: argparse.Namespace) -> TurnstoreClient:
    token = os.environ.get("TURNSTORE_AUTH_TOKEN") or None
    return TurnstoreClient(args.target, timeout=30.0, token=token)


def _size(value: int) -> str:
    amount = float(value)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{value} bytes" if unit == "bytes" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_stats(stats: DaemonStats) -> str:
    """The readable text of ``turnstore stats``."""
    if stats.retention_enabled:
        retention = (
            f"on: {stats.retention_sweeps} sweeps removed {stats.retention_removed_threads} "
            f"threads ({stats.retention_removed_events} events) and "
            f"{stats.retention_removed_conversations} conversations"
        )
        if stats.retention_last_error:
            retention += f"; last sweep failed: {stats.retention_last_error}"
    else:
        retention = "off"
    rows = [
        ("threads", f"{stats.threads}"),
        ("events", f"{stats.events}"),
        ("turns", f"{stats.turns} ({stats.finished_turns} finished)"),
        ("conversations", f"{stats.conversations} ({stats.snapshot_versions} versions stored)"),
        ("data file", f"{_size(stats.data_file_bytes)} (map {_size(stats.map_size_bytes)})"),
        (
            "space",
            f"{_size(stats.used_bytes)} used, {stats.used_fraction:.0%} of the "
            f"{_size(stats.write_limit_bytes)} writes may fill (ceiling "
            f"{_size(stats.max_db_bytes)}, the rest kept for deletes)",
        ),
        ("replays", f"{stats.open_replays} open, {stats.live_followers} following"),
        (
            "follower budget",
            f"{_size(stats.follower_held_bytes)} held, "
            f"{_size(stats.follower_ending_bytes)} held for ended followers, "
            f"{stats.followers_ended_too_slow} ended as too slow",
        ),
        ("retention", retention),
    ]
    return "\n".join(f"{name:<14} {value}" for name, value in rows)


async def _stats(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        stats = await client.admin.stats()
    if _as_json(args):
        print(json.dumps(stats.to_json_dict()))
    else:
        print(format_stats(stats))
    return 0


async def _backup(args: argparse.Namespace, dest: str) -> int:
    async with _client(args) as client:
        result = await client.admin.backup(dest)
    if _as_json(args):
        print(json.dumps({"dest_dir": result.dest_dir, "bytes_written": result.bytes_written}))
    else:
        print(f"backup written to {result.dest_dir} ({_size(result.bytes_written)})")
    return 0


async def _export(args: argparse.Namespace, out: IO[bytes]) -> int:
    async with _client(args) as client:
        admin: GrpcAdmin = client.admin
        report = await admin.export_to(lambda line: out.write(line.encode("utf-8") + b"\n"))
    print(
        f"exported {report.threads} threads ({report.events} events, "
        f"{report.finished_turns} finished turns) and {report.snapshots} snapshots",
        file=sys.stderr,
    )
    if report.threads_cleared:
        print(
            f"{report.threads_cleared} threads were cleared while being exported; "
            "their lines end at the clear",
            file=sys.stderr,
        )
    return 0


def _run_export(args: argparse.Namespace) -> int:
    if args.output is None:
        status = asyncio.run(_export(args, sys.stdout.buffer))
        sys.stdout.buffer.flush()
        return status
    output: Path = args.output
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        with partial.open("wb") as out:
            status = asyncio.run(_export(args, out))
            out.flush()
            os.fsync(out.fileno())
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    return status


async def _import(args: argparse.Namespace, lines: Iterable[str]) -> int:
    async with _client(args) as client:
        report = await client.admin.import_from(lines)
    if _as_json(args):
        print(json.dumps(vars(report)))
    else:
        print(
            f"imported {report.threads} threads: {report.events} events "
            f"({report.positions_moved} at other positions than exported), "
            f"{report.turns_finished} turns finished "
            f"({report.turns_already_finished} were already), "
            f"{report.snapshots_saved} snapshots saved "
            f"({report.snapshots_unchanged} were already)"
        )
    return 0


def _run_import(args: argparse.Namespace) -> int:
    if args.input is None:
        stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
        return asyncio.run(_import(args, stdin))
    with args.input.open(encoding="utf-8") as lines:
        return asyncio.run(_import(args, lines))


def run_admin_command(args: argparse.Namespace) -> int | None:
    """Run ``args.command`` if it is one of :data:`COMMANDS`; its exit status, else None."""
    command = args.command
    if command not in COMMANDS:
        return None
    try:
        if command == "stats":
            return asyncio.run(_stats(args))
        if command == "backup":
            return asyncio.run(_backup(args, os.path.abspath(args.dest)))
        if command == "export":
            return _run_export(args)
        return _run_import(args)
    except TurnstoreError as error:
        print(f"turnstore {command}: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    except (OSError, UnicodeDecodeError) as error:
        print(f"turnstore {command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run one of the operations commands on its own (``python -m turnstore.admin_cli``)."""
    parser = argparse.ArgumentParser(
        prog="turnstore", description="Operate a running turnstore daemon."
    )
    add_admin_commands(parser.add_subparsers(dest="command", required=True))
    status = run_admin_command(parser.parse_args(argv))
    assert status is not None
    return status


if __name__ == "__main__":
    raise SystemExit(main())
