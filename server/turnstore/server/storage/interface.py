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
  (``ThreadView.number``), and a read bounded by a view of the old one fails
  with ThreadClearedError.
- ``add_commit_listener`` callbacks learn which threads each commit changed,
  after it is durable, which is what wakes live followers.

The module imports neither gRPC nor generated code, like every backend.
"""

from __future__ import annotations

import contextlib
import queue
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from turnstore.server.storage.values import (
    BackupResult,
    KeySummary,
    Limits,
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


def new_epoch_mask() -> int:
    """A random epoch mask for a restored database: below 2**53, bit 52 set.

    Thread numbers (counted up from 1) stay far below 2**52, so every epoch
    made with it is non-zero (0 means "no thread"), an exact JavaScript
    number (the TypeScript client and the inspector read epochs as numbers),
    and differs from every epoch of the database's earlier lives made with
    another mask (but for a 2**-52 chance): in particular from mask 0, the
    epochs of a database never restored.
    """
    return (1 << 52) | secrets.randbits(52)


CommitListener = Callable[[set[str]], None]
CommitObserver = Callable[[int, float], None]


class StorageEngine(Protocol):
    """A storage backend: event streams, snapshots and their operations."""

    @property
    def limits(self) -> Limits:
        """The input limits this backend enforces (and reports in its errors)."""
        ...

    @property
    def epoch_mask(self) -> int:
        """XORed into thread numbers to make the epochs readers see (a replay's
        ``thread_epoch``); below 2**53. It changes when the database was
        restored from a backup, so no cursor from before the restore matches.
        """
        ...

    @property
    def map_size(self) -> int:
        """The bytes the backend has reserved for data (LMDB's map; 0 where none)."""
        ...

    # -- writes ---------------------------------------------------------------

    def append(
        self, thread_id: str, turn: int, events: Sequence[NewEvent], finish: bool = False
    ) -> Future[list[int]]:
        """Append ``events`` to the end of one turn, atomically; their positions.

        Idempotent by event id within the thread; ``finish`` also closes the
        turn in the same commit. TurnFinishedError for a finished turn,
        EventIdConflictError for an id stored in another turn.
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

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Call ``listener(thread_ids)`` after every durable commit (quick, non-blocking)."""
        ...

    def add_commit_observer(self, observer: CommitObserver) -> None:
        """Call ``observer(writes, seconds)`` after every commit, for metrics."""
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
        expected_number: int | None,
        start_position: int,
        finish_seq: int | None,
        max_events: int,
        watched_turn: int | None = None,
        max_bytes: int = 4 * 1024 * 1024,
    ) -> ReplayStep:
        """One step of a replay: the next events and the finishes they pass."""
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

    def list_keys(self, start_after: str = "", limit: int = 1000) -> list[KeySummary]:
        """Up to ``limit`` conversation keys holding a snapshot, after ``start_after``."""
        ...

    def storage_stats(self) -> StorageStats:
        """What the backend holds."""
        ...

    def space_usage(self) -> SpaceUsage:
        """How close the backend is to its size limits."""
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


class QueuedWrite(Protocol):
    """What a backend's writer queues: the thread a write changes and its future."""

    thread_id: str | None
    future: Future[Any]


W = TypeVar("W")


def group_commits(
    writes: queue.SimpleQueue[W | None], max_batch: int, commit: Callable[[list[W]], None]
) -> None:
    """A writer thread's loop: commit whatever is queued, up to ``max_batch`` at once.

    Blocks for the first write, then takes every write already waiting, so a
    busy engine commits many writes per transaction and an idle one commits
    each at once. Returns at the ``None`` sentinel, after committing the
    writes queued before it.
    """
    while True:
        first = writes.get()
        if first is None:
            return
        batch = [first]
        stop = False
        while len(batch) < max_batch:
            try:
                item = writes.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        commit(batch)
        if stop:
            return


def deliver_commit(
    writes: Sequence[QueuedWrite],
    outcomes: Sequence[tuple[bool, Any]],
    seconds: float,
    listeners: Sequence[CommitListener],
    observers: Sequence[CommitObserver],
) -> None:
    """After a durable commit: resolve each write's future, then tell listeners and observers.

    ``outcomes`` holds ``(True, result)`` or ``(False, error)`` per write.
    Listeners learn the threads the successful writes changed (none when
    there were none); their exceptions, and the observers', are ignored.
    """
    changed: set[str] = set()
    for write, (ok, result) in zip(writes, outcomes, strict=True):
        if ok:
            write.future.set_result(result)
            if write.thread_id is not None:
                changed.add(write.thread_id)
        else:
            write.future.set_exception(result)
    if changed:
        for listener in listeners:
            with contextlib.suppress(Exception):
                listener(changed)
    for observer in observers:
        with contextlib.suppress(Exception):
            observer(len(writes), seconds)
