"""The operations commands of ``turnstore``: backup, stats, export, import.

:func:`add_admin_commands` adds them to the ``turnstore`` command's
subparsers and :func:`run_admin_command` runs one (it returns None for any
other command). ``python -m turnstore.cli.admin`` runs them on their own.
Each talks to a running daemon through :class:`turnstore.admin.TurnstoreAdmin`,
reached with the connection options of :mod:`turnstore.cli.common`
(``--target``, ``--token-file``, ``--tls-*`` or their environment
variables). Export, import and backup draw a progress line on stderr when it
is a terminal. Exit status: 0 on success, 1 when the daemon or a file fails,
2 for bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO, Final

from turnstore import transfer
from turnstore.admin import DaemonStats, TurnstoreAdmin
from turnstore.cli.common import (
    Progress,
    add_format_option,
    add_parser,
    as_json,
    format_size,
    handle,
    printable,
    printable_json,
)
from turnstore.cli.connection import OptionFileError, connect

COMMANDS: Final = ("backup", "stats", "export", "import")

# Export lines of events start so (the encoder writes `kind` first, compactly).
_EVENT_LINE_PREFIX: Final = '{"kind":"event"'


def add_admin_commands(commands: Any) -> None:
    """Add ``backup``, ``stats``, ``export`` and ``import`` to ``commands``.

    ``commands`` is the object ``ArgumentParser.add_subparsers`` returned
    (its ``dest`` must be ``"command"``).
    """
    backup = add_parser(
        commands,
        "backup",
        help="copy the database of a running daemon",
        description=(
            "Have the daemon write a consistent, compacted copy of its database to DEST "
            "while it goes on serving. DEST is a directory inside the daemon's --backup-dir "
            "(relative to it, or absolute inside it; no '..', no symbolic links); it must "
            "not exist or be an empty directory, and its parent must exist. A daemon "
            "started without --backup-dir refuses backups. `turnstore serve --data-dir "
            "BACKUP_DIR/DEST` serves the copy. On a terminal, a progress line shows the "
            "time taken and, at the end, the size."
        ),
    )
    backup.add_argument("dest", help="directory to create inside the daemon's --backup-dir")
    add_format_option(backup, "one JSON object")
    handle(backup, _backup)

    stats = add_parser(
        commands,
        "stats",
        help="print what a daemon stores and its counters",
        description=(
            "Print threads, events, turns, conversations, snapshot versions, the size "
            "of the database file, replay and retention counters: readable text on a "
            "terminal, one JSON object when piped."
        ),
    )
    add_format_option(stats, "one JSON object")
    handle(stats, _stats)

    export = add_parser(
        commands,
        "export",
        help="write every thread and snapshot as JSON lines",
        description=(
            "Write every thread (its events and finished turns, in position order) and "
            "the latest snapshot of every conversation key as JSON lines (the format is "
            "in docs/operations.md). Threads are read one after the other while the "
            "daemon serves; for one point in time, take a backup. On a terminal, a "
            "progress line on stderr shows events, bytes and the rate."
        ),
    )
    export.add_argument(
        "--output", "-o", type=Path, help="file to write (default: stdout); replaced when done"
    )
    handle(export, _export)

    import_ = add_parser(
        commands,
        "import",
        help="append the threads and snapshots of an export",
        description=(
            "Read an export's JSON lines and append its events, finish its finished "
            "turns and save its snapshots. Positions are assigned by the target; event "
            "ids make it safe to run the same import again. On a terminal, a progress "
            "line on stderr shows lines, bytes read and the rate."
        ),
    )
    import_.add_argument("--input", "-i", type=Path, help="file to read (default: stdin)")
    add_format_option(import_, "one JSON object")
    handle(import_, _import)


def format_stats(stats: DaemonStats) -> str:
    """The readable text of ``turnstore stats``."""
    if stats.retention_enabled:
        retention = (
            f"on: {stats.retention_sweeps} sweeps removed {stats.retention_removed_threads} "
            f"threads ({stats.retention_removed_events} events) and "
            f"{stats.retention_removed_conversations} conversations"
        )
        if stats.retention_last_error:
            retention += f"; last sweep failed: {printable(stats.retention_last_error)}"
    else:
        retention = "off"
    if stats.write_limit_bytes:
        space = (
            f"{format_size(stats.used_bytes)} used, {stats.used_fraction:.0%} of the "
            f"{format_size(stats.write_limit_bytes)} writes may fill (ceiling "
            f"{format_size(stats.max_db_bytes)}, the rest kept for deletes)"
        )
    else:  # PostgreSQL: the database's own space is the only limit.
        space = f"{format_size(stats.used_bytes)} used, no write limit on this backend"
    if stats.map_size_bytes:
        data_file = (
            f"{format_size(stats.data_file_bytes)} (map {format_size(stats.map_size_bytes)})"
        )
    else:
        data_file = f"{format_size(stats.data_file_bytes)} (tables and indexes, no map)"
    rows = [
        ("threads", f"{stats.threads}"),
        ("events", f"{stats.events}"),
        ("turns", f"{stats.turns} ({stats.finished_turns} finished)"),
        ("conversations", f"{stats.conversations} ({stats.snapshot_versions} versions stored)"),
        ("data file", data_file),
        ("space", space),
        ("replays", f"{stats.open_replays} open, {stats.live_followers} following"),
        (
            "follower budget",
            f"{format_size(stats.follower_held_bytes)} held, "
            f"{format_size(stats.follower_ending_bytes)} held for ended followers, "
            f"{stats.followers_ended_too_slow} ended as too slow",
        ),
        ("retention", retention),
    ]
    return "\n".join(f"{name:<14} {value}" for name, value in rows)


async def _stats(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        stats = await client.admin.stats()
    if as_json(args):
        print(printable_json(json.dumps(stats.to_json_dict())))
    else:
        print(format_stats(stats))
    return 0


async def _backup(args: argparse.Namespace) -> int:
    async with connect(args) as client:
        # The copy grows in a hidden directory on the daemon's host: its size
        # is known here only from the answer.
        progress = Progress("backup:", unit=None)
        if progress.enabled:
            # The compacted copy is at most as large as the daemon's data file.
            progress.total_bytes = (await client.admin.stats()).data_file_bytes
        async with progress:
            result = await client.admin.backup(args.dest)
            progress.total_bytes = progress.bytes = result.bytes_written
    if as_json(args):
        record = {"dest_dir": result.dest_dir, "bytes_written": result.bytes_written}
        print(printable_json(json.dumps(record)))
    else:
        print(
            f"backup written to {printable(result.dest_dir)} ({format_size(result.bytes_written)})"
        )
    return 0


async def _export_to(args: argparse.Namespace, out: IO[bytes], terminal: bool = False) -> int:
    """Export into ``out``; on a ``terminal``, with the lines' control characters escaped."""
    async with connect(args) as client, Progress("exported") as progress:
        admin: TurnstoreAdmin = client.admin

        def write(line: str) -> None:
            data = (printable_json(line) if terminal else line).encode("utf-8") + b"\n"
            out.write(data)
            progress.bytes += len(data)
            if line.startswith(_EVENT_LINE_PREFIX):
                progress.events += 1

        report = await admin.export_to(write)
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


def _umask_mode() -> int:
    """The mode a new file gets from ``open()`` under this process's umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _create_partial(output: Path) -> tuple[int, str]:
    """A new temporary file beside ``output``: its open descriptor and its path.

    Raises OSError naming the output and its directory (not the temporary
    name) when the directory is missing or refuses new files, and when the
    output is a directory.
    """
    directory = output.parent
    if output.is_dir():
        raise IsADirectoryError(f"cannot write {str(output)!r}: it is a directory")
    try:
        return tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial", dir=directory)
    except (FileNotFoundError, NotADirectoryError) as error:
        raise type(error)(
            f"cannot write {str(output)!r}: the directory {str(directory)!r} does not exist"
        ) from error
    except OSError as error:
        raise OSError(
            f"cannot write {str(output)!r}: cannot create a file in {str(directory)!r} "
            f"({error.strerror})"
        ) from error


async def _export(args: argparse.Namespace) -> int:
    """Export to stdout, or to ``--output`` through a temporary file renamed over it.

    The temporary file sits beside the output (so that the rename is atomic)
    under a random name, created exclusively with mode 0600 and without
    following a symbolic link (:func:`tempfile.mkstemp`: ``O_CREAT|O_EXCL|
    O_NOFOLLOW``): a link or file planted beside the output can neither
    redirect the export nor be overwritten. The rename replaces the output's
    directory entry itself, a symbolic link there included, never what a link
    points to. Before the rename the file gets the mode ``open()`` would give
    it under the umask. A failed export removes its temporary file and leaves
    the output as it was.
    """
    if args.output is None:
        stdout = sys.stdout.buffer
        status = await _export_to(args, stdout, terminal=sys.stdout.isatty())
        stdout.flush()
        return status
    descriptor, partial = _create_partial(args.output)
    try:
        with os.fdopen(descriptor, "wb") as out:
            status = await _export_to(args, out)
            out.flush()
            os.fchmod(out.fileno(), _umask_mode())
            os.fsync(out.fileno())
        os.replace(partial, args.output)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return status


def _counted_lines(source: BinaryIO, progress: Progress) -> Iterator[str]:
    """The UTF-8 lines of ``source``, counting lines and bytes into ``progress``."""
    for raw in transfer.read_lines(source):  # bounded: a huge line is refused, not read whole
        progress.events += 1
        progress.bytes += len(raw)
        yield raw.decode("utf-8")


async def _import_from(args: argparse.Namespace, source: BinaryIO) -> int:
    try:
        size = os.fstat(source.fileno()).st_size if args.input is not None else None
    except OSError:
        size = None
    progress = Progress("read", unit="lines", total_bytes=size)
    async with connect(args) as client, progress:
        report = await client.admin.import_from(_counted_lines(source, progress))
    if as_json(args):
        print(printable_json(json.dumps(vars(report))))
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


async def _import(args: argparse.Namespace) -> int:
    if args.input is None:
        return await _import_from(args, sys.stdin.buffer)
    try:
        source = args.input.open("rb")
    except OSError as error:
        raise OptionFileError.unreadable("--input", args.input, error) from None
    with source:
        return await _import_from(args, source)


def run_admin_command(args: argparse.Namespace) -> int | None:
    """Run ``args.command`` if it is one of :data:`COMMANDS`; its exit status, else None."""
    if args.command not in COMMANDS:
        return None
    status: int = args.run(args)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run one of the operations commands on its own (``python -m turnstore.cli.admin``)."""
    parser = argparse.ArgumentParser(
        prog="turnstore", description="Operate a running turnstore daemon."
    )
    add_admin_commands(parser.add_subparsers(dest="command", required=True))
    status = run_admin_command(parser.parse_args(argv))
    assert status is not None
    return status


if __name__ == "__main__":
    raise SystemExit(main())
