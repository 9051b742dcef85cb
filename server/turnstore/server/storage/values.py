"""The values the storage engine takes and returns, and its configuration.

Plain data: nothing here touches LMDB, gRPC or generated code. Kept apart
from :mod:`turnstore.server.storage.lmdb.engine` so that the engine module holds the
engine's behaviour only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from turnstore.server.storage.errors import CursorOutOfRangeError

MIB = 1024 * 1024
GIB = 1024 * MIB
# The largest key LMDB accepts in its default build.
LMDB_MAX_KEY_BYTES = 511
# The largest conversation key (LMDB indexes longer keys in two halves: storage/lmdb/schema.py).
MAX_CONVERSATION_KEY_BYTES = 1000


@dataclass(frozen=True)
class Limits:
    """Input limits the engine enforces, each raising InvalidArgumentError."""

    max_thread_id_bytes: int = 256
    max_key_bytes: int = MAX_CONVERSATION_KEY_BYTES
    max_event_id_bytes: int = 256
    # The encoded envelope (header fields and body) of one event.
    max_event_bytes: int = 1 * MIB
    max_events_per_append: int = 10_000
    max_snapshot_bytes: int = 32 * MIB
    # Operations in one HistoryStoreService.Batch.
    max_batch_operations: int = 1000

    def __post_init__(self) -> None:
        if not 1 <= self.max_thread_id_bytes <= LMDB_MAX_KEY_BYTES:
            raise ValueError(f"max_thread_id_bytes must be between 1 and {LMDB_MAX_KEY_BYTES}")
        if not 1 <= self.max_key_bytes <= MAX_CONVERSATION_KEY_BYTES:
            raise ValueError(f"max_key_bytes must be between 1 and {MAX_CONVERSATION_KEY_BYTES}")
        # Event id index keys are an 8-byte thread number and the id.
        if not 1 <= self.max_event_id_bytes <= LMDB_MAX_KEY_BYTES - 8:
            raise ValueError(f"max_event_id_bytes must be between 1 and {LMDB_MAX_KEY_BYTES - 8}")
        for name in (
            "max_event_bytes",
            "max_events_per_append",
            "max_snapshot_bytes",
            "max_batch_operations",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    @property
    def max_message_bytes(self) -> int:
        """The largest gRPC message these limits admit, with room for framing."""
        largest_append = self.max_event_bytes * min(self.max_events_per_append, 64)
        return max(64 * MIB, self.max_snapshot_bytes + MIB, largest_append + MIB)


@dataclass(frozen=True)
class EngineConfig:
    """How to open the engine.

    ``initial_map_bytes`` is the LMDB map size to start with; the map doubles
    whenever a write needs more room, up to ``max_map_bytes``, past which
    writes fail with :class:`StorageFullError`. On Linux the data file grows
    only as pages are written, whatever the map size.
    """

    data_dir: Path
    initial_map_bytes: int = 64 * MIB
    max_map_bytes: int = 16 * GIB
    limits: Limits = field(default_factory=Limits)
    # How many writes one transaction (and one fsync) may carry at most.
    max_writes_per_commit: int = 1024
    max_readers: int = 256
    # How many snapshot versions to keep per key (the latest included).
    snapshot_versions_kept: int = 4
    # Retention: threads (conversation keys) whose last write is older than
    # this many seconds are removed by a background sweep; None keeps them
    # forever. The sweep runs every ``retention_interval_seconds`` (the first
    # one an interval after opening) while either age is set.
    retain_threads_for_seconds: float | None = None
    retain_conversations_for_seconds: float | None = None
    retention_interval_seconds: float = 60.0
    # Room below ``max_map_bytes`` that only writes removing data may use
    # (clear, delete, retention): writes that add data stop at the ceiling
    # minus this. None: 1% of the ceiling, at least 1 MiB, at most a quarter.
    delete_reserve_bytes: int | None = None
    # The one directory backups are written inside (resolved, checked at
    # open); None refuses every backup.
    backup_dir: Path | None = None
    # LMDB's --commit-sync: "journal" or "lmdb" (one sync or two; docs/one-sync.md).
    commit_sync: str = "journal"

    def __post_init__(self) -> None:
        if self.initial_map_bytes <= 0 or self.max_map_bytes < self.initial_map_bytes:
            raise ValueError("need 0 < initial_map_bytes <= max_map_bytes")
        reserve = self.delete_reserve_bytes
        if reserve is not None and not 0 <= reserve <= self.max_map_bytes // 2:
            raise ValueError("the delete reserve must be between 0 and half the ceiling")
        if self.snapshot_versions_kept < 1:
            raise ValueError("snapshot_versions_kept must be at least 1")
        for name in ("retain_threads_for_seconds", "retain_conversations_for_seconds"):
            age = getattr(self, name)
            if age is not None and not 0 < age < 1e9:
                raise ValueError(f"{name} must be positive (seconds) or None")
        if not 0 < self.retention_interval_seconds < 1e9:
            raise ValueError("retention_interval_seconds must be positive")

    @property
    def retention_enabled(self) -> bool:
        """Whether either retention age is set."""
        return (
            self.retain_threads_for_seconds is not None
            or self.retain_conversations_for_seconds is not None
        )


@dataclass(frozen=True)
class PostgresConfig:
    """Where the PostgreSQL backend's database is, and how many connections reads may hold.

    ``dsn`` is a libpq connection string or URI; it may hold a password,
    which is never logged (``storage.postgres.opening.redact_dsn``). Every follower
    re-reads each ``tick_seconds`` even without a notification, so a lost
    one costs at most that much latency.
    """

    dsn: str = field(repr=False)
    pool_size: int = 8
    connect_timeout_seconds: float = 2.0
    tick_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ValueError("--postgres-pool-size must be at least 1")


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
    events (PostgreSQL reads past finishes; see ``replay.parts``). ``at_end`` says that both
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
