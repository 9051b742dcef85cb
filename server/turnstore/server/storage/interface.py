"""The storage-engine interface the service depends on.

:class:`StorageEngine` is every call the gRPC and HTTP layers make of a
storage backend. :class:`turnstore.server.storage.lmdb.engine.LmdbEngine` (LMDB, embedded)
implements it; a second backend (PostgreSQL, for a fleet of daemons on one
database) implements the same calls with the same meaning:

- Writes return a :class:`concurrent.futures.Future` that resolves only after
  the write is durably committed (fsynced), or fails with an
  :class:`~turnstore.server.storage.errors.EngineError`. Input over a limit raises
  InvalidArgumentError at once, before anything is queued.
- Reads block (callers run them on a thread pool) and return plain values
  from :mod:`turnstore.server.storage.values`; stored events travel as their wire
  records (:mod:`turnstore.server.storage.records`), never re-encoded.
- Positions are per thread, 0-based, gap-free, in commit order, and never
  reused until the thread is cleared; a cleared thread gets a new epoch
  (``ThreadView.epoch``, ``ReplayStep.epoch``: the engines' own thread
  numbers never leave them, :mod:`turnstore.server.storage.epochs`), and a
  read bounded by a view of the old one fails with ThreadClearedError.
- ``add_commit_listener`` callbacks learn which threads each commit changed,
  after it is durable, which is what wakes live followers.

A feature one backend lacks is a no-op there (``add_wake_all_listener`` on
LMDB, ``add_space_level_listener`` on PostgreSQL), so the daemon never asks
which backend it has: :func:`turnstore.server.storage.factory.open_engine`
opens the configured one, and is the only module above the engines that
names them. How engines are built (group commit, epochs) lives beside this
module, in :mod:`~turnstore.server.storage.commits` and
:mod:`~turnstore.server.storage.epochs`.

The module imports neither gRPC nor generated code, like every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Protocol

from turnstore.server.storage.batches import BatchOp, BatchResult
from turnstore.server.storage.config import Limits
from turnstore.server.storage.values import (
    BackupResult,
    KeySummary,
    NewEvent,
    ReadBudget,
    ReplayStep,
    RetentionStats,
    SnapshotVersion,
    SpaceUsage,
    StorageStats,
    StoredSnapshot,
    SweepResult,
    ThreadSummary,
    ThreadView,
    TurnChunk,
    TurnCursor,
)

CommitListener = Callable[[set[str]], None]
CommitObserver = Callable[[int, float], None]
WakeAll = Callable[[], None]
SpaceLevelListener = Callable[[SpaceUsage, float | None, float | None], None]


class StorageEngine(Protocol):
    """A storage backend: event streams, snapshots and their operations."""

    @property
    def limits(self) -> Limits:
        """The input limits this backend enforces (and reports in its errors)."""
        ...

    # -- writes ---------------------------------------------------------------

    def append(
        self,
        thread_id: str,
        turn: int,
        events: Sequence[NewEvent],
        finish: bool = False,
        expected_next_position: int | None = None,
    ) -> Future[list[int]]:
        """Append ``events`` to the end of one turn, atomically; their positions.

        Idempotent by event id within the thread: an event whose id is stored
        in this turn keeps its original position (even if the turn was
        finished since); ``finish`` also closes the turn in the same commit.
        TurnFinishedError for a finished turn (TurnAlreadyFinishedError for a
        bare finish), EventIdConflictError for an id stored in another turn.
        With ``expected_next_position``, a write that would store anything
        happens only if the thread's next position is that (0: no thread),
        checked in the commit that writes, else NextPositionConflictError and
        nothing is written (the other writes of the commit are unaffected); a
        retry whose events are all stored returns their positions unchecked.
        """
        ...

    def finish_turn(self, thread_id: str, turn: int) -> Future[int]:
        """Close a turn (an empty one if never appended to); its event count.

        TurnAlreadyFinishedError when it is already finished.
        """
        ...

    def clear(self, thread_id: str) -> Future[int]:
        """Remove a thread and everything of it; the number of events removed."""
        ...

    def save_snapshot(
        self, key: str, data: bytes, content_type: str, expected_version: int | None = None
    ) -> Future[int]:
        """Store a snapshot as a full overwrite; its version (1, 2, 3, ... per key).

        With ``expected_version``, only if the key is at that version (0: none),
        else VersionConflictError and nothing changes.
        """
        ...

    def delete_snapshots(self, key: str) -> Future[int]:
        """Delete every kept version of a key; how many there were."""
        ...

    def apply_batch(self, operations: Sequence[BatchOp]) -> Future[list[BatchResult]]:
        """Apply saves, deletes and prefix deletes in order, all or nothing, in one durable
        commit; one result per operation. InvalidArgumentError (at once) or
        VersionConflictError (through the future) naming the operation's index refuses
        the whole batch: nothing of it is written."""
        ...

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Call ``listener(thread_ids)`` after every durable commit (quick, non-blocking)."""
        ...

    def add_commit_observer(self, observer: CommitObserver) -> None:
        """Call ``observer(writes, seconds)`` after every commit, for metrics."""
        ...

    def add_wake_all_listener(self, wake: WakeAll) -> None:
        """Call ``wake()`` whenever every follower should re-read (quick, non-blocking).

        A shared database's notifications can be lost (its listen connection
        drops, or between ticks), so the PostgreSQL backend calls it on every
        tick and after reconnecting. A no-op on LMDB: its own writer's commit
        listeners miss nothing.
        """
        ...

    def add_space_level_listener(self, listener: SpaceLevelListener) -> None:
        """Call ``listener(usage, crossed, fell_below)`` when usage crosses a warning level.

        ``crossed`` is the level (a fraction of the write limit) crossed
        upward, or None; ``fell_below`` the lowest level usage fell below, or
        None. Called on the writer thread: it must be quick. A no-op where
        the backend has no size ceiling of turnstore's (PostgreSQL).
        """
        ...

    # -- reads ----------------------------------------------------------------

    def view(self, thread_id: str) -> ThreadView:
        """A thread's current extent, bounding a multi-part read."""
        ...

    def event_count(self, thread_id: str) -> int:
        """The number of events in a thread; 0 for an unknown thread."""
        ...

    def get_turn(self, thread_id: str, turn: int, max_bytes: int | None = None) -> TurnChunk | None:
        """One whole turn, or None for an unknown thread or turn.

        With ``max_bytes``, a turn whose records total more is refused with
        InvalidArgumentError (naming the size, the limit and the paged
        reads) before any record is read.
        """
        ...

    def read_commit_order(
        self, view: ThreadView, start_position: int, budget: ReadBudget
    ) -> list[bytes]:
        """Event records from ``start_position`` on, below the view's end, within ``budget``."""
        ...

    def turn_cursor_at_offset(self, view: ThreadView, offset: int) -> TurnCursor | None:
        """The turn-order cursor that skips the first ``offset`` events (None: past the end)."""
        ...

    def read_turn_order(
        self, view: ThreadView, cursor: TurnCursor, budget: ReadBudget, include_empty: bool
    ) -> tuple[list[TurnChunk], TurnCursor | None]:
        """Turn-ordered records from ``cursor`` on, within ``budget``, and where to go on."""
        ...

    def replay_step(
        self,
        thread_id: str,
        expected_epoch: int | None,
        start_position: int,
        finish_seq: int | None,
        max_events: int,
        watched_turn: int | None = None,
        max_bytes: int = 4 * 1024 * 1024,
    ) -> ReplayStep:
        """One step of a replay: the next events and the finishes they pass.

        ``expected_epoch`` is the thread's epoch seen so far (None: none yet);
        a missing thread or another epoch now answers ``cleared``.
        """
        ...

    def load_snapshot(self, key: str, version: int | None = None) -> StoredSnapshot | None:
        """The latest snapshot of a key (or the kept ``version``); None when none."""
        ...

    def list_snapshot_versions(self, key: str) -> list[SnapshotVersion]:
        """The kept versions of a key, newest first, without reading their data."""
        ...

    # -- operations -------------------------------------------------------------

    def list_threads(self, start_after: str = "", limit: int = 1000) -> list[ThreadSummary]:
        """Up to ``limit`` threads after ``start_after``, in byte order of their ids."""
        ...

    def list_recent_threads(
        self, limit: int, keep: Callable[[str], bool] | None = None
    ) -> list[ThreadSummary]:
        """Up to ``limit`` threads, most recently written first (ties: higher id first).

        Reads an index by last write, so it costs what it returns, not the
        number of threads. ``keep`` (a thread id filter, e.g. a scope) skips
        threads it refuses; the listing then reads on until ``limit`` are kept.
        """
        ...

    def list_keys(
        self,
        start_after: str = "",
        limit: int = 1000,
        *,
        prefix: str = "",
        end_before: str = "",
        newest_first: bool = False,
    ) -> list[KeySummary]:
        """Up to ``limit`` conversation keys holding a snapshot in a range (a
        :class:`~turnstore.server.storage.batches.KeyRange`: under ``prefix``, before
        ``end_before``, after ``start_after`` in the listing's direction), ascending, or
        descending with ``newest_first``. Costs the keys it returns: deleted keys and keys
        outside the range are not read."""
        ...

    def storage_stats(self) -> StorageStats:
        """What the backend holds."""
        ...

    def space_usage(self) -> SpaceUsage:
        """How close the backend is to its size ceiling, with the space it holds on disk.

        Cheap enough to read at every metrics scrape (one short read). All
        zeros where the backend has no ceiling and no files of turnstore's
        (PostgreSQL: the database's own space is its limit, and the size of
        its tables, in :meth:`storage_stats`, costs a query).
        """
        ...

    def startup_report(self) -> dict[str, object]:
        """What the daemon's ``serving`` log line says of this backend, as log fields.

        Where it stores and its size limits, and what opening it changed or
        cleaned up: ``restored_backup_new_epochs`` when it opened a restored
        backup (every thread got a new epoch, so readers' cursors from before
        report "cleared"), the partial backups it removed or could not.
        """
        ...

    def backup(self, dest_dir: str) -> BackupResult:
        """A consistent copy in ``dest_dir``, inside the backup directory.

        BackupFailedError where the backend has none or no backup directory is set.
        """
        ...

    def sweep_retention(self, now_ns: int | None = None) -> SweepResult:
        """Remove what the configured ages expire."""
        ...

    def retention_stats(self) -> RetentionStats:
        """What retention did since the backend was opened."""
        ...

    def close(self) -> None:
        """Commit what is queued, then release everything."""
        ...
