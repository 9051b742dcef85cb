"""The values the storage engine takes and returns (its configuration: :mod:`.config`).

Plain data: nothing here touches LMDB, gRPC or generated code. Kept apart
from :mod:`turnstore.server.storage.lmdb.engine` so that the engine module holds the
engine's behaviour only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from turnstore.server.storage.errors import CursorOutOfRangeError


class NewEvent(NamedTuple):
    """An event to append: its id (checked against the limits) and its record.

    ``envelope`` is the encoded ``EventEnvelope``; the engine stores it
    unparsed inside the event record.
    """

    event_id: str
    envelope: bytes


@dataclass(frozen=True)
class TurnChunk:
    """A turn, or a consecutive piece of one: its number, flag and records."""

    turn: int
    finished: bool
    events: list[bytes]


@dataclass(frozen=True)
class StoredSnapshot:
    """A snapshot as stored."""

    version: int
    content_type: str
    data: bytes
    saved_at_ns: int


@dataclass(frozen=True)
class SnapshotVersion:
    """A kept snapshot version as a listing shows it: its metadata, never its data.

    ``size_bytes`` is the length of the stored data, known without reading it.
    """

    version: int
    content_type: str
    size_bytes: int
    saved_at_ns: int


@dataclass(frozen=True)
class ThreadView:
    """A thread as of one moment: reads through it see no later events.

    ``end_position`` is the thread's event count at that moment. ``epoch``
    is the thread's epoch as readers see it (:mod:`turnstore.server.storage.epochs`):
    a new one after every clear and after a restore from a backup, never 0. A
    view of a thread that does not exist has ``epoch`` None and reads as empty.
    """

    thread_id: str
    epoch: int | None
    end_position: int


@dataclass
class TurnCursor:
    """Where a turn-ordered read resumes: the turn, and positions to skip."""

    turn: int = 0
    # Resume after this position within ``turn`` (-1: from its start).
    after_position: int = -1
    # Events of ``turn`` still to skip before returning any (offset reads).
    skip: int = 0


class ReadBudget:
    """How much one read may return: a number of events and of bytes.

    A read takes at least one event, and stops once either limit is reached,
    so a message built from it stays near ``max_bytes`` even when events are
    large.
    """

    __slots__ = ("bytes_left", "events_left")

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.events_left = max_events
        self.bytes_left = max_bytes

    def spend(self, value: bytes) -> bool:
        """Count one value; True once the budget is used up."""
        self.events_left -= 1
        self.bytes_left -= len(value)
        return self.spent

    @property
    def spent(self) -> bool:
        """Whether either limit is reached."""
        return self.events_left <= 0 or self.bytes_left <= 0


@dataclass(frozen=True)
class FinishRecord:
    """A turn's finish as a replay reports it.

    ``frontier`` is the thread's event count at the finish: every event below
    it came before the finish, every event at or above it after.
    """

    turn: int
    event_count: int
    last_position: int | None
    frontier: int


@dataclass(frozen=True)
class ReplayStep:
    """What one :meth:`LmdbEngine.replay_step` read found.

    ``events`` are the records at positions ``[start, next_position)``, in
    order. ``finishes`` are the finishes from the requested sequence number
    on whose frontier is at most ``next_position``: it may lie among the
    events (both engines read past finishes; see ``replay.parts``). ``at_end`` says that both
    were read to the end of what is stored. ``cleared`` says the thread is not
    the one of the expected epoch any more (nothing else is set then).
    ``epoch`` is the thread's epoch as readers see it (None: no thread).
    """

    epoch: int | None
    events: list[bytes]
    next_position: int
    finishes: list[FinishRecord]
    next_finish_seq: int
    at_end: bool
    cleared: bool = False
    watched_turn_finished: bool = False


def replay_opening(
    thread_id: str,
    expected_epoch: int | None,
    start_position: int,
    thread: tuple[int, int] | None,
) -> ReplayStep | None:
    """The answer of a replay step decided before any record is read, or None.

    ``thread`` is the thread's (epoch, end position) as the step's read
    sees it, None for a thread that is not stored (or, through a scope, not
    visible: it must look missing). A thread that is missing or has another
    epoch than ``expected_epoch`` was cleared; a ``start_position`` past
    the end raises CursorOutOfRangeError. Positions are committed before any
    reader sees them and never taken back within an epoch, so, checked in
    the read's own snapshot, this refuses only cursors no daemon ever handed
    out. Every engine answers through here, so all answer alike.
    """
    epoch, end_position = thread if thread is not None else (None, 0)
    if expected_epoch is not None and epoch != expected_epoch:
        return ReplayStep(None, [], start_position, [], 0, True, cleared=True)
    if start_position > end_position:
        raise CursorOutOfRangeError(thread_id, start_position - 1, end_position)
    if thread is None:
        return ReplayStep(None, [], start_position, [], 0, True)
    return None


@dataclass(frozen=True)
class ThreadSummary:
    """A thread as :meth:`LmdbEngine.list_threads` lists it."""

    thread_id: str
    event_count: int
    finished_turns: int
    last_write_ns: int


@dataclass(frozen=True)
class KeySummary:
    """A conversation key as :meth:`LmdbEngine.list_keys` lists it."""

    key: str
    current_version: int
    last_write_ns: int


@dataclass(frozen=True)
class SpaceUsage:
    """How full the database is.

    ``used_bytes`` is the pages in use, ``max_bytes`` the ceiling
    (``--max-db-size``), ``write_limit_bytes`` where writes that add data stop
    (the ceiling minus the reserve). Both are 0 when there is no limit (the
    PostgreSQL engine: the database's own space is its limit).
    ``reserved_bytes`` is the space the backend has reserved for data (LMDB's
    map, which grows towards the ceiling) and ``file_bytes`` the size of its
    data file on disk; both 0 where there is none (PostgreSQL) or they were
    not measured (the usage a space level listener gets).
    """

    used_bytes: int
    max_bytes: int
    write_limit_bytes: int
    reserved_bytes: int = 0
    file_bytes: int = 0

    @property
    def used_fraction(self) -> float:
        """``used_bytes`` as a fraction of ``write_limit_bytes``: at 1.0 additions stop.

        0.0 without a limit.
        """
        return self.used_bytes / self.write_limit_bytes if self.write_limit_bytes else 0.0


@dataclass(frozen=True)
class StorageStats:
    """What the database holds (:meth:`LmdbEngine.storage_stats`).

    ``turns`` counts every turn, ``finished_turns`` those finished;
    ``conversations`` the keys holding a snapshot and ``snapshot_versions``
    the kept versions of all of them; ``data_file_bytes`` is the size of
    ``data.mdb``; ``space`` how close the database is to its ceiling.
    """

    threads: int
    events: int
    turns: int
    finished_turns: int
    conversations: int
    snapshot_versions: int
    data_file_bytes: int
    space: SpaceUsage


@dataclass(frozen=True)
class BackupResult:
    """A finished backup: its directory and the size of its ``data.mdb``."""

    dest_dir: Path
    bytes_written: int


@dataclass(frozen=True)
class SweepResult:
    """What one retention sweep removed."""

    removed_threads: int
    removed_events: int
    removed_conversations: int


@dataclass(frozen=True)
class RetentionStats:
    """The retention sweeps' totals since the engine was opened.

    ``last_sweep_ns`` is the time the last completed sweep judged by (0:
    none yet); ``last_error`` describes the last sweep's failure, None after
    a sweep that completed.
    """

    enabled: bool
    sweeps: int
    removed_threads: int
    removed_events: int
    removed_conversations: int
    last_sweep_ns: int
    last_error: str | None
