"""Operating a daemon: statistics, backups, listings, export and import.

Obtain a :class:`TurnstoreAdmin` as ``client.admin``. It shares the client's
channel (and so its token and TLS settings), timeout and retry policy; every
failed call raises a :class:`~turnstore.errors.TurnstoreError` subclass,
mapped by :mod:`turnstore._status`. The ``turnstore backup``, ``stats``,
``export`` and ``import`` commands (:mod:`turnstore.cli.admin`) are thin
wrappers of it; the export format is described in :mod:`turnstore.transfer`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Final

import grpc

from turnstore import transfer
from turnstore._convert import JSON
from turnstore._retry import NO_RETRY, RetryPolicy, call_with_retry
from turnstore._status import mapped_stream
from turnstore.errors import TurnAlreadyFinishedError, TurnstoreError
from turnstore.replay import Replay, ThreadCleared, TurnFinished, replay_request
from turnstore.results import StoredEvent
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

__all__ = [
    "BackupResult",
    "DaemonStats",
    "ExportReport",
    "ImportReport",
    "KeyInfo",
    "ThreadInfo",
    "TurnstoreAdmin",
]

# One import append carries at most this many events and about this many bytes.
IMPORT_BATCH_EVENTS: Final = 500
IMPORT_BATCH_BYTES: Final = 4 * 1024 * 1024


@dataclass(frozen=True)
class DaemonStats:
    """What ``AdminService.GetStats`` reports; the proto documents each field."""

    live_followers: int
    open_replays: int
    map_size_bytes: int
    threads: int
    events: int
    turns: int
    finished_turns: int
    conversations: int
    snapshot_versions: int
    data_file_bytes: int
    retention_enabled: bool
    retention_sweeps: int
    retention_removed_threads: int
    retention_removed_events: int
    retention_removed_conversations: int
    retention_last_error: str
    follower_held_bytes: int
    follower_ending_bytes: int
    followers_ended_too_slow: int
    used_bytes: int
    max_db_bytes: int
    write_limit_bytes: int

    @property
    def used_fraction(self) -> float:
        """``used_bytes`` as a fraction of ``write_limit_bytes`` (writes stop at 1.0).

        0.0 when there is no write limit (a daemon on PostgreSQL) and from a
        daemon too old to say.
        """
        return self.used_bytes / self.write_limit_bytes if self.write_limit_bytes else 0.0

    @classmethod
    def from_proto(cls, message: pb.GetStatsResponse) -> DaemonStats:
        """The stats of a ``GetStatsResponse``."""
        return cls(**{name: getattr(message, name) for name in cls.__dataclass_fields__})

    def to_json_dict(self) -> dict[str, Any]:
        """The stats as a JSON object, one key per field."""
        return asdict(self)


@dataclass(frozen=True)
class BackupResult:
    """A backup the daemon wrote: its absolute directory (on the daemon's host) and size."""

    dest_dir: str
    bytes_written: int


@dataclass(frozen=True)
class ThreadInfo:
    """A thread as ``ListThreads`` lists it."""

    thread_id: str
    event_count: int
    finished_turns: int
    last_write_unix_nanos: int


@dataclass(frozen=True)
class KeyInfo:
    """A conversation key holding a snapshot, as ``ListKeys`` lists it."""

    key: str
    version: int
    last_write_unix_nanos: int


@dataclass
class ExportReport:
    """What an export wrote.

    ``threads_cleared`` counts threads cleared while they were being read:
    the lines written for them are their events up to the clear.
    """

    threads: int = 0
    events: int = 0
    finished_turns: int = 0
    snapshots: int = 0
    threads_cleared: int = 0


@dataclass
class ImportReport:
    """What an import did.

    ``events`` counts events sent (an event already stored counts too: its
    append is a no-op); ``positions_moved`` those that got another position
    than in the export (0 when importing into threads that did not exist).
    ``turns_already_finished`` and ``snapshots_unchanged`` count what an
    earlier run of the same import had done already.
    """

    threads: int = 0
    events: int = 0
    positions_moved: int = 0
    turns_finished: int = 0
    turns_already_finished: int = 0
    snapshots_saved: int = 0
    snapshots_unchanged: int = 0


class TurnstoreAdmin:
    """Administrative calls to a turnstore daemon; obtain it as ``client.admin``.

    Unary calls use the client's timeout and are retried on
    UnavailableError like the stores' calls (except :meth:`backup`).
    Listings, exports and imports have no overall deadline (they may be
    long); the channel's keepalive pings end them with UnavailableError when
    the daemon stops answering.
    """

    def __init__(
        self, channel: grpc.aio.Channel, timeout: float | None, retry: RetryPolicy
    ) -> None:
        self._admin = pb_grpc.AdminServiceStub(channel)
        self._events = pb_grpc.EventStoreServiceStub(channel)
        self._history = pb_grpc.HistoryStoreServiceStub(channel)
        self._timeout = timeout
        self._retry = retry

    async def stats(self) -> DaemonStats:
        """The daemon's counters and what its database holds."""
        response = await call_with_retry(
            lambda: self._admin.GetStats(pb.GetStatsRequest(), timeout=self._timeout), self._retry
        )
        return DaemonStats.from_proto(response)

    async def backup(
        self,
        dest_dir: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> BackupResult:
        """Have the daemon write a consistent, compacted copy of its database.

        ``dest_dir`` is a directory inside the daemon's ``--backup-dir``
        (relative to it, or absolute inside it) that does not exist or is an
        empty directory (see ``AdminService.Backup``); the result names it
        absolute. A daemon without ``--backup-dir`` refuses with
        FailedPreconditionError; ``..``, a path outside and a symbolic link
        give InvalidArgumentError. Not
        retried: a lost answer may hide a finished backup. ``timeout``
        bounds the whole copy (None: no deadline).
        """
        request = pb.BackupRequest(dest_dir=dest_dir)
        response = await call_with_retry(
            lambda: self._admin.Backup(request, timeout=timeout), NO_RETRY
        )
        return BackupResult(response.dest_dir, response.bytes_written)

    async def list_threads(self, start_after: str = "") -> AsyncIterator[ThreadInfo]:
        """Every thread, in the byte order of the UTF-8 ids, after ``start_after``."""
        call = self._events.ListThreads(pb.ListThreadsRequest(start_after=start_after))
        async for message in mapped_stream(call):
            for thread in message.threads:
                yield ThreadInfo(
                    thread.thread_id,
                    thread.event_count,
                    thread.finished_turns,
                    thread.last_write_unix_nanos,
                )

    async def list_keys(self, start_after: str = "") -> AsyncIterator[KeyInfo]:
        """Every conversation key holding a snapshot, in byte order, after ``start_after``."""
        call = self._history.ListKeys(pb.ListKeysRequest(start_after=start_after))
        async for message in mapped_stream(call):
            for key in message.keys:
                yield KeyInfo(key.key, key.version, key.last_write_unix_nanos)

    async def _load(self, key: str) -> pb.Snapshot | None:
        request = pb.LoadRequest(key=key)
        response = await call_with_retry(
            lambda: self._history.Load(request, timeout=self._timeout), self._retry
        )
        return response.snapshot if response.found else None

    async def export_to(self, write: Callable[[str], object]) -> ExportReport:
        """Export every thread and the latest snapshot of every key as JSON lines.

        ``write`` is called with each line (without its newline). Threads are
        read one at a time, each up to what was stored when its read caught
        up; the export is therefore not one point in time (take a backup for
        that).
        """
        report = ExportReport()
        write(transfer.header_line())
        async for thread in self.list_threads():
            report.threads += 1
            request = replay_request(
                thread.thread_id,
                None,
                follow=False,
                from_turn=None,
                to_turn=None,
                event_types=None,
                until_turn_finished=None,
                epoch=None,
                max_events_per_message=0,
            )
            async with Replay(self._events.Replay(request), None, None) as replay:
                async for item in replay:
                    if isinstance(item, StoredEvent):
                        assert item.message is not None
                        write(transfer.event_line(thread.thread_id, item.message))
                        report.events += 1
                    elif isinstance(item, TurnFinished):
                        write(transfer.finish_line(thread.thread_id, item.turn))
                        report.finished_turns += 1
                    elif isinstance(item, ThreadCleared):
                        report.threads_cleared += 1
        async for key in self.list_keys():
            snapshot = await self._load(key.key)
            if snapshot is None:  # deleted since it was listed
                continue
            write(
                transfer.snapshot_line(
                    key.key, snapshot.version, snapshot.content_type, snapshot.data
                )
            )
            report.snapshots += 1
        return report

    async def import_from(self, lines: Iterable[str]) -> ImportReport:
        """Import JSON lines of an export (see :mod:`turnstore.transfer`).

        Events are appended per thread and turn in the order of the lines
        (consecutive events of one turn in one append); the target assigns
        positions, and event ids make appends idempotent. Finished turns are
        finished again (one already finished counts as done). A snapshot is
        saved unless the key's latest snapshot already has the same content
        type and data. Running the same import twice therefore changes
        nothing the second time. Raises :class:`~turnstore.transfer.TransferError`
        naming the line at the first malformed line or failed call (with the
        call's error as ``__cause__``); what came before it stays imported.
        """
        report = ImportReport()
        threads: set[str] = set()
        batch: list[transfer.EventLine] = []
        batch_bytes = 0
        batch_lines = (0, 0)  # the first and last line of the batch

        async def flush() -> None:
            nonlocal batch, batch_bytes
            if not batch:
                return
            first = batch[0]
            request = pb.AppendRequest(
                thread_id=first.thread_id, turn=first.turn, events=[e.envelope for e in batch]
            )
            try:
                response = await call_with_retry(
                    lambda: self._events.Append(request, timeout=self._timeout), self._retry
                )
            except TurnstoreError as error:
                raise transfer.TransferError(
                    f"{type(error).__name__}: {error}", *batch_lines
                ) from error
            report.events += len(batch)
            report.positions_moved += sum(
                1
                for line, position in zip(batch, response.positions, strict=True)
                if line.position != position
            )
            batch, batch_bytes = [], 0

        for number, text in enumerate(lines, 1):
            if not text.strip():
                continue
            try:
                line = transfer.parse_line(text)
            except transfer.TransferError as error:
                raise transfer.TransferError(str(error), number) from error
            if isinstance(line, transfer.EventLine):
                size = line.envelope.ByteSize()
                if batch and (
                    (batch[0].thread_id, batch[0].turn) != (line.thread_id, line.turn)
                    or len(batch) >= IMPORT_BATCH_EVENTS
                    or batch_bytes + size > IMPORT_BATCH_BYTES
                ):
                    await flush()
                if not batch:
                    batch_lines = (number, number)
                threads.add(line.thread_id)
                batch.append(line)
                batch_bytes += size
                batch_lines = (batch_lines[0], number)
                continue
            await flush()
            try:
                if isinstance(line, transfer.FinishLine):
                    threads.add(line.thread_id)
                    await self._finish(line, report)
                elif isinstance(line, transfer.SnapshotLine):
                    await self._save(line, report)
            except TurnstoreError as error:
                raise transfer.TransferError(f"{type(error).__name__}: {error}", number) from error
        await flush()
        report.threads = len(threads)
        return report

    async def _finish(self, line: transfer.FinishLine, report: ImportReport) -> None:
        request = pb.FinishTurnRequest(thread_id=line.thread_id, turn=line.turn)
        try:
            await call_with_retry(
                lambda: self._events.FinishTurn(request, timeout=self._timeout), self._retry
            )
        except TurnAlreadyFinishedError:
            report.turns_already_finished += 1
        else:
            report.turns_finished += 1

    async def _save(self, line: transfer.SnapshotLine, report: ImportReport) -> None:
        current = await self._load(line.key)
        content_type = line.content_type or JSON
        if (
            current is not None
            and (current.content_type or JSON) == content_type
            and current.data == line.data
        ):
            report.snapshots_unchanged += 1
            return
        request = pb.SaveRequest(key=line.key, data=line.data, content_type=content_type)
        await call_with_retry(
            lambda: self._history.Save(request, timeout=self._timeout), self._retry
        )
        report.snapshots_saved += 1
