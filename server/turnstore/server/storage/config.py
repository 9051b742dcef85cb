"""The storage engines' configuration: limits, the LMDB engine's and PostgreSQL's.

Plain data, as :mod:`turnstore.server.storage.values`: the daemon's options
build these, and each engine reads its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
    commit_sync: str = "lmdb"

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
