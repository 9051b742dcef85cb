"""The LMDB storage engine, :class:`LmdbEngine`: turn-scoped event streams and snapshots
in LMDB, composed of parts, each of which it hands the one :class:`.state.LmdbState`:

- :mod:`.writer`: the writer thread and group commit (one transaction and one
  fsync for every write waiting; a write's future resolves only after that);
- functions over an LMDB transaction: :mod:`.turns`, :mod:`.snapshots` (writes,
  applied by the writer), :mod:`.reads`, :mod:`.operations` (reads, each in its
  own short read transaction, safe from any thread), :mod:`.retention`;
- :mod:`.opening` (the data directory) and :mod:`.backups` (consistent copies).

The engine checks its callers' input (:class:`InputChecks`), opens the read
transaction or queues the write, and delegates. It never imports gRPC or
generated code; it raises the exceptions of :mod:`turnstore.server.storage.errors`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path

import lmdb

from turnstore.server.storage.config import MIB, EngineConfig
from turnstore.server.storage.errors import EngineClosedError
from turnstore.server.storage.inputs import InputChecks
from turnstore.server.storage.interface import (
    CommitListener,
    CommitObserver,
    SpaceLevelListener,
    WakeAll,
)
from turnstore.server.storage.lmdb import (
    backup_journal,
    backup_paths,
    backups,
    operations,
    reads,
    retention,
    snapshots,
    turns,
)
from turnstore.server.storage.lmdb.key_calls import KeyRangeCalls
from turnstore.server.storage.lmdb.opening import OpenedDirectory, open_directory, startup_report
from turnstore.server.storage.lmdb.retention import RETENTION_BATCH_EVENTS
from turnstore.server.storage.lmdb.writer import Writer
from turnstore.server.storage.retention import RETENTION_BATCH_ITEMS, RETENTION_SCAN_PAGE
from turnstore.server.storage.values import (
    BackupResult,
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

__all__ = ["RETENTION_BATCH_EVENTS", "RETENTION_BATCH_ITEMS", "RETENTION_SCAN_PAGE", "LmdbEngine"]


class LmdbEngine(KeyRangeCalls, InputChecks):
    """turnstore's LMDB engine. Open with :meth:`open`, close with :meth:`close`.

    Writes return a :class:`concurrent.futures.Future` that resolves once the
    write is durably committed, or fails with an
    :class:`~turnstore.server.storage.errors.EngineError`. Reads block and
    return. When a retention age is set, a background thread runs
    :meth:`sweep_retention` every ``retention_interval_seconds`` until
    :meth:`close`.
    """

    def __init__(self, opened: OpenedDirectory) -> None:
        self._opened = opened
        self._state = opened.state
        self.config = opened.state.config
        self.limits = self.config.limits
        self.space = opened.state.space
        self._lock_file = opened.lock_file
        self._backup_journal = backup_journal.BackupJournal(Path(self.config.data_dir))
        # What open() found (the daemon logs it): backups cut short, and
        # whether this was a backup copy never opened before (new epochs drawn).
        self.removed_partial_backups: list[Path] = opened.removed_partial_backups
        self.partial_backup_problems: list[str] = opened.partial_backup_problems
        self.opened_restored_backup = opened.restored_backup
        self._writer = Writer(self._state, opened.journal)
        # Any write function, queued (tests line up batches with it).
        self._submit = self._writer.submit
        self._sweeper = retention.Sweeper(self._state, self._writer)

    @classmethod
    def open(cls, config: EngineConfig) -> LmdbEngine:
        """Open (creating if needed) the data directory and its LMDB environment.

        Raises :class:`DataDirLockedError` when another process holds the
        directory, and ``ValueError`` when it holds a newer schema version or
        the backup directory is unusable (:func:`backup_paths.check_backup_dir`).
        """
        return cls(open_directory(config))

    def close(self) -> None:
        """Commit every write already queued, then close the environment.

        Writes submitted afterwards fail with EngineClosedError. Idempotent.
        """
        self._sweeper.stop()
        if not self._writer.close():
            return
        # The retention thread ends at its next step: its writes now fail.
        self._sweeper.join()
        self._state.env.close()
        self._lock_file.close()

    @property
    def map_size(self) -> int:
        """The current LMDB map size in bytes."""
        return self._state.map_size

    def add_wake_all_listener(self, wake: WakeAll) -> None:
        """A no-op: this engine's own writer tells the commit listeners of every commit."""

    def add_space_level_listener(self, listener: SpaceLevelListener) -> None:
        """Call ``listener`` when usage crosses a warning level (:class:`SpaceGuard`)."""
        self.space.add_level_listener(listener)

    def startup_report(self) -> dict[str, object]:
        """As :func:`.opening.startup_report`: fields for the daemon's ``serving`` line."""
        return startup_report(self._opened)

    def add_commit_listener(self, listener: CommitListener) -> None:
        """As :meth:`.writer.Writer.add_commit_listener`: told the threads each commit changed."""
        self._writer.add_commit_listener(listener)

    def add_commit_observer(self, observer: CommitObserver) -> None:
        """As :meth:`.writer.Writer.add_commit_observer`: told each commit's size and time."""
        self._writer.add_commit_observer(observer)

    # -- turn writes (:mod:`.turns`) ----------------------------------------------

    def append(
        self,
        thread_id: str,
        turn: int,
        events: Sequence[NewEvent],
        finish: bool = False,
        expected_next_position: int | None = None,
    ) -> Future[list[int]]:
        """Append events, in order, to the end of one turn, atomically; their positions.

        As :meth:`StorageEngine.append <turnstore.server.storage.interface.StorageEngine.append>`
        (rules in :func:`.turns.write_turn`). The thread and turn are created
        as needed; InvalidArgumentError (raised at once, not through the
        future) for an empty batch or input over a limit.
        """
        key, expected = self._thread_key(thread_id), expected_next_position
        self._check_turn(turn)
        encoded = self._checked_events(events, finish)

        def apply(txn: lmdb.Transaction, now: int) -> list[int]:
            return turns.write_turn(self._state, txn, key, turn, encoded, finish, now, expected)[0]

        return self._writer.submit(thread_id, apply)

    def finish_turn(self, thread_id: str, turn: int) -> Future[int]:
        """Record a turn's close barrier; resolves to the turn's event count.

        A turn never appended to becomes an empty finished turn. Fails with
        TurnAlreadyFinishedError when the turn is already finished.
        """
        key = self._thread_key(thread_id)
        self._check_turn(turn)

        def apply(txn: lmdb.Transaction, now_ns: int) -> int:
            return turns.write_turn(self._state, txn, key, turn, [], True, now_ns)[1]

        return self._writer.submit(thread_id, apply)

    def clear(self, thread_id: str) -> Future[int]:
        """Remove a thread entirely; resolves to the number of events removed.

        Succeeds (with 0) for an unknown thread. The thread's next write
        starts it afresh: positions from 0, every turn number free.
        """
        key = self._thread_key(thread_id)
        return self._writer.submit(
            thread_id, lambda txn, _: turns.clear_thread(self._state, txn, key), frees=True
        )

    # -- snapshots (:mod:`.snapshots`) --------------------------------------------

    def save_snapshot(
        self, key: str, data: bytes, content_type: str, expected_version: int | None = None
    ) -> Future[int]:
        """Store a snapshot under a key as a full overwrite; resolves to its version.

        Versions start at 1 and grow by one per save of the key; a delete does
        not restart them. With ``expected_version``, fails with
        VersionConflictError unless it equals the current version (0 when no
        snapshot is stored). Only the newest ``snapshot_versions_kept``
        versions are kept.
        """
        encoded_key = self._conversation_key(key)
        content_type_bytes = self._checked_snapshot(data, content_type)
        state = self._state

        def apply(txn: lmdb.Transaction, now_ns: int) -> int:
            return snapshots.save(
                state, txn, now_ns, key, encoded_key, data, content_type_bytes, expected_version
            )

        return self._writer.submit(None, apply)

    def delete_snapshots(self, key: str) -> Future[int]:
        """Delete every kept version of a key; resolves to how many there were.

        Succeeds (with 0) for an unknown key. The key's version counter is
        kept, so the next save gets a higher version than any before.
        """
        encoded_key = self._conversation_key(key)
        return self._writer.submit(
            None,
            lambda txn, now_ns: snapshots.delete(self._state, txn, now_ns, encoded_key),
            frees=True,
        )

    def load_snapshot(self, key: str, version: int | None = None) -> StoredSnapshot | None:
        """The latest snapshot under a key, or the given kept version; None when the key was
        never saved, was deleted, or the version is not kept."""
        encoded_key = self._conversation_key(key)
        if version is not None:
            self._check_turn(version)
        with self._state.read_in_place() as txn:
            return snapshots.load(self._state, txn, encoded_key, version)

    def list_snapshot_versions(self, key: str) -> list[SnapshotVersion]:
        """The kept versions of a key, newest first: metadata and sizes only, never the
        data. Empty for an unknown or deleted key."""
        encoded_key = self._conversation_key(key)
        with self._state.read_in_place() as txn:
            return snapshots.list_versions(self._state, txn, encoded_key)

    # -- reads (:mod:`.reads`) ----------------------------------------------------

    def view(self, thread_id: str) -> ThreadView:
        """Capture a thread's current extent for a bounded multi-part read."""
        key = self._thread_key(thread_id)
        with self._state.read() as txn:
            return reads.view(self._state, txn, thread_id, key)

    def event_count(self, thread_id: str) -> int:
        """The number of events in a thread; 0 for an unknown thread."""
        return self.view(thread_id).end_position

    def get_turn(self, thread_id: str, turn: int, max_bytes: int | None = None) -> TurnChunk | None:
        """One whole turn, or None for an unknown thread or turn.

        With ``max_bytes``, a turn whose records total more raises
        InvalidArgumentError before any record is read (see :func:`.reads.get_turn`).
        """
        key = self._thread_key(thread_id)
        self._check_turn(turn)
        with self._state.read_in_place() as txn:
            return reads.get_turn(self._state, txn, key, turn, max_bytes)

    def read_commit_order(
        self, view: ThreadView, start_position: int, budget: ReadBudget
    ) -> list[bytes]:
        """Records from ``start_position`` on, below the view's end, within ``budget``; empty
        at the view's end. ThreadClearedError if the thread was cleared after the view."""
        with self._state.read() as txn:
            return reads.read_commit_order(self._state, txn, view, start_position, budget)

    def turn_cursor_at_offset(self, view: ThreadView, offset: int) -> TurnCursor | None:
        """The turn-order cursor that skips the first ``offset`` events; None at or past
        the end of the thread."""
        with self._state.read() as txn:
            return reads.turn_cursor_at_offset(self._state, txn, view, offset)

    def read_turn_order(
        self, view: ThreadView, cursor: TurnCursor, budget: ReadBudget, include_empty: bool
    ) -> tuple[list[TurnChunk], TurnCursor | None]:
        """Turn-ordered records from ``cursor`` on, within ``budget``; the cursor to go on
        from, or None when the view is exhausted (see :func:`.reads.read_turn_order`)."""
        with self._state.read() as txn:
            return reads.read_turn_order(self._state, txn, view, cursor, budget, include_empty)

    def replay_step(
        self,
        thread_id: str,
        expected_epoch: int | None,
        start_position: int,
        finish_seq: int | None,
        max_events: int,
        watched_turn: int | None = None,
        max_bytes: int = 4 * MIB,
    ) -> ReplayStep:
        """One step of a replay: the next events and the finishes they pass, in one read
        (see :func:`.reads.replay_step`)."""
        key = self._thread_key(thread_id)
        with self._state.read() as txn:
            position = (expected_epoch, start_position, finish_seq)
            bounds = (max_events, watched_turn, max_bytes)
            return reads.replay_step(self._state, txn, thread_id, key, *position, *bounds)

    # -- operations (:mod:`.operations`, :mod:`.backups`) -------------------------

    def list_threads(self, start_after: str = "", limit: int = 1000) -> list[ThreadSummary]:
        """Up to ``limit`` threads after ``start_after`` ("": from the first), in the byte
        order of their UTF-8 ids. Each call is one read transaction; a listing in several
        calls sees threads created or removed in between, or not."""
        with self._state.read() as txn:
            return operations.list_threads(self._state, txn, start_after, limit)

    def list_recent_threads(
        self, limit: int, keep: Callable[[str], bool] | None = None
    ) -> list[ThreadSummary]:
        """Up to ``limit`` threads, most recently written first (ties: higher id first),
        in one read transaction that reads only the entries it returns or ``keep`` refuses."""
        with self._state.read() as txn:
            return operations.list_recent_threads(self._state, txn, limit, keep)

    def storage_stats(self) -> StorageStats:
        """What the database holds, counted in one read transaction (see
        :func:`.operations.storage_stats`), and the data file's size."""
        with self._state.read() as txn:
            stats = operations.storage_stats(self._state, txn)
        size = (Path(self.config.data_dir) / "data.mdb").stat().st_size
        space = dataclasses.replace(stats.space, reserved_bytes=self.map_size, file_bytes=size)
        return dataclasses.replace(stats, data_file_bytes=size, space=space)

    def space_usage(self) -> SpaceUsage:
        """How close the database is to its ceiling, measured in one short read."""
        with self._state.read() as txn:
            usage = self.space.usage(txn)
        size = (Path(self.config.data_dir) / "data.mdb").stat().st_size
        return dataclasses.replace(usage, reserved_bytes=self.map_size, file_bytes=size)

    def backup(self, dest_dir: str) -> BackupResult:
        """Write a consistent, compacted copy of the database to ``dest_dir``.

        Blocks for the length of the copy; run it off the event loop. The
        copy is taken in one LMDB read transaction (``mdb_env_copyfd2`` with
        compaction), so writers go on meanwhile; only a growth of the map
        waits for it to end. ``dest_dir`` is a path inside the configured
        backup directory (:mod:`.backup_paths` says which), and either holds
        a whole backup at the end or is unchanged (:mod:`.backups`). The
        result is a data directory: ``turnstore serve --data-dir DEST``
        serves it. Raises BackupFailedError when no backup directory is
        configured or writing fails, InvalidArgumentError for an
        unacceptable ``dest_dir``.
        """
        dest = backup_paths.check_destination(dest_dir, self.config.backup_dir)
        if self._writer.closed:
            raise EngineClosedError("the engine is closed")
        return backups.write_backup(
            self._state.env, self._state.gate.reading, dest, self._backup_journal
        )

    # -- retention (:mod:`.retention`) --------------------------------------------

    def remove_thread_if_idle(self, thread_id: str, cutoff_ns: int) -> Future[int | None]:
        """Remove a thread unless written at or after ``cutoff_ns`` (checked in the write,
        so one written after a sweep judged it is kept); the events removed, or None
        when kept or unknown. Followers of the thread see it cleared."""
        return self._sweeper.remove_thread_if_idle(thread_id, cutoff_ns)

    def remove_conversation_if_idle(self, key: str, cutoff_ns: int) -> Future[int | None]:
        """Remove a key, its snapshots and its version counter (a later save starts at 1
        again), checked like :meth:`remove_thread_if_idle`; the versions removed, or None."""
        return self._sweeper.remove_conversation_if_idle(key, cutoff_ns)

    def sweep_retention(self, now_ns: int | None = None) -> SweepResult:
        """Remove the threads and conversation keys the configured ages expire.

        Blocks until done; run it off the event loop. It scans in short read
        transactions and removes in small batches through the writer queue
        (at most ``RETENTION_BATCH_ITEMS`` threads or keys, and about
        ``RETENTION_BATCH_EVENTS`` events), so appends interleave with it.
        See :meth:`.retention.Sweeper.sweep`.
        """
        return self._sweeper.sweep(now_ns)

    def retention_stats(self) -> RetentionStats:
        """What the retention sweeps did since the engine was opened."""
        return self._sweeper.bookkeeping.stats(self.config.retention_enabled)
