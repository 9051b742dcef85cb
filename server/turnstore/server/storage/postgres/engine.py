"""The PostgreSQL storage engine: :class:`PostgresEngine`, the StorageEngine calls on a database.

Writes go through one writer thread and connection that commits every write
waiting in its queue in one transaction (:mod:`.writer`); reads take a
connection from a bounded pool and run in one read-only REPEATABLE READ
transaction (:mod:`.reads`); one LISTEN connection wakes this daemon's
followers on every daemon's commits (:mod:`.listen`). The semantics are the
LMDB engine's, call for call. The engine imports neither gRPC nor generated
code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import psycopg
import psycopg_pool

from turnstore.server.storage.batches import BatchOp, BatchResult, KeyRange
from turnstore.server.storage.config import EngineConfig, PostgresConfig
from turnstore.server.storage.epochs import to_epoch
from turnstore.server.storage.errors import (
    BackupFailedError,
    DatabaseUnavailableError,
    EngineClosedError,
)
from turnstore.server.storage.inputs import InputChecks
from turnstore.server.storage.interface import (
    CommitListener,
    CommitObserver,
    SpaceLevelListener,
    WakeAll,
)
from turnstore.server.storage.postgres import opening, operations, reads, writes
from turnstore.server.storage.postgres.appends import TurnAppend
from turnstore.server.storage.postgres.listen import CommitFeed
from turnstore.server.storage.postgres.reachability import Reachability
from turnstore.server.storage.postgres.read_cursor import check_idle, read_cursor
from turnstore.server.storage.postgres.replay_reads import replay_step
from turnstore.server.storage.postgres.retention import Retention
from turnstore.server.storage.postgres.writer import Writer, _describe
from turnstore.server.storage.postgres.writes import Cursor
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

T = TypeVar("T")


class PostgresEngine(Retention, InputChecks):
    """turnstore's PostgreSQL backend. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, config: EngineConfig, pg: PostgresConfig) -> None:
        self.config = config
        self.limits = config.limits
        # Set by open() (opening.epoch_mask): the same for every daemon of a fleet.
        self.epoch_mask = 0
        # Whether open() found the tables restored into another database.
        self.opened_restored_backup = False
        self._pg = pg
        self._closed = False
        self.database = opening.redact_dsn(pg.dsn)
        self._timeout = max(1, round(pg.connect_timeout_seconds))
        kwargs: dict[str, Any] = {"connect_timeout": self._timeout}
        self._pool = psycopg_pool.ConnectionPool(
            pg.dsn,
            min_size=1,
            max_size=pg.pool_size,
            kwargs=kwargs,
            configure=opening.configure_reader,
            # A connection the database dropped (a restart) is replaced, not handed out.
            check=check_idle,
            timeout=pg.connect_timeout_seconds,
            open=False,
            name="turnstore-reads",
        )
        # Autocommit: the writer sends BEGIN and COMMIT itself, inside its pipelines.
        self._reachability = Reachability()
        self._writer = Writer(
            lambda: self._connect(autocommit=True),
            config.max_writes_per_commit,
            self._reachability,
        )
        self._feed = CommitFeed(
            lambda: self._connect(autocommit=True),
            self._writer.listeners,
            pg.tick_seconds,
            self._reachability,
            self._writer.backend_pid,
        )
        self._init_retention()

    def _connect(self, autocommit: bool = False) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self._pg.dsn, autocommit=autocommit, connect_timeout=self._timeout)
        try:
            conn.execute(opening.INDEX_COSTS)
            if not autocommit:
                conn.commit()
        except BaseException:
            conn.close()
            raise
        return conn

    @classmethod
    def open(cls, config: EngineConfig, pg: PostgresConfig) -> PostgresEngine:
        """Connect, create the schema on first start, and start the threads.

        Raises ValueError when the database holds a newer schema (naming both
        versions) and DatabaseUnavailableError when it cannot be reached.
        """
        try:
            with psycopg.connect(
                pg.dsn, connect_timeout=max(1, round(pg.connect_timeout_seconds))
            ) as conn:
                created = opening.prepare_schema(conn, pg.dsn)
                mask, restored = opening.epoch_mask(conn, created)
        except psycopg.OperationalError as error:
            raise DatabaseUnavailableError(
                f"cannot reach the database ({opening.redact_dsn(pg.dsn)}): {_describe(error)}"
            ) from None
        engine = cls(config, pg)
        engine.epoch_mask, engine.opened_restored_backup = mask, restored
        engine._pool.open(wait=False)
        return engine

    def wait_listening(self, timeout: float) -> bool:
        """Whether the LISTEN connection is in place within ``timeout`` seconds."""
        return self._feed.listening.wait(timeout)

    def add_wake_all_listener(self, wake: WakeAll) -> None:
        """Call ``wake()`` on every tick and after the listen connection reconnects.

        Every follower should then re-read: a notification may have been lost.
        """
        self._feed.wake_all_listeners.append(wake)

    def add_space_level_listener(self, listener: SpaceLevelListener) -> None:
        """A no-op: PostgreSQL has no size ceiling of turnstore's to warn about."""

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Call ``listener(thread_ids)`` after this daemon's commits and others' notifications."""
        self._writer.listeners.append(listener)

    def add_commit_observer(self, observer: CommitObserver) -> None:
        self._writer.observers.append(observer)

    # -- validation ------------------------------------------------------------

    # -- writes -----------------------------------------------------------------

    def append(
        self,
        thread_id: str,
        turn: int,
        events: Sequence[NewEvent],
        finish: bool = False,
        expected_next_position: int | None = None,
    ) -> Future[list[int]]:
        """As :meth:`turnstore.server.storage.lmdb.engine.LmdbEngine.append`."""
        key = self._thread_key(thread_id)
        self._check_turn(turn)
        encoded = self._checked_events(events, finish)
        append = TurnAppend(
            key, turn, encoded, finish, expected_next_position=expected_next_position
        )
        return self._writer.submit_append(thread_id, append)

    def finish_turn(self, thread_id: str, turn: int) -> Future[int]:
        """As :meth:`turnstore.server.storage.lmdb.engine.LmdbEngine.finish_turn`."""
        key = self._thread_key(thread_id)
        self._check_turn(turn)
        return self._writer.submit_append(
            thread_id, TurnAppend(key, turn, [], True, count_result=True)
        )

    def clear(self, thread_id: str) -> Future[int]:
        """As :meth:`turnstore.server.storage.lmdb.engine.LmdbEngine.clear`."""
        key = self._thread_key(thread_id)
        return self._writer.submit(thread_id, lambda cur, now: writes.delete_thread(cur, key) or 0)

    def save_snapshot(
        self, key: str, data: bytes, content_type: str, expected_version: int | None = None
    ) -> Future[int]:
        """As :meth:`turnstore.server.storage.lmdb.engine.LmdbEngine.save_snapshot`."""
        encoded_key = self._conversation_key(key)
        self._checked_snapshot(data, content_type)
        kept = self.config.snapshot_versions_kept
        return self._writer.submit(
            None,
            lambda cur, now: writes.save_snapshot(
                cur, encoded_key, data, content_type, expected_version, kept, now
            ),
        )

    def delete_snapshots(self, key: str) -> Future[int]:
        """As :meth:`turnstore.server.storage.lmdb.engine.LmdbEngine.delete_snapshots`."""
        encoded_key = self._conversation_key(key)
        return self._writer.submit(
            None, lambda cur, now: writes.delete_snapshots(cur, encoded_key, now)
        )

    def apply_batch(self, operations: Sequence[BatchOp]) -> Future[list[BatchResult]]:
        """As :meth:`turnstore.server.storage.lmdb.engine.LmdbEngine.apply_batch` (under a
        savepoint of the writer's transaction)."""
        checked = self._checked_batch(operations)
        kept = self.config.snapshot_versions_kept
        return self._submit(None, lambda cur, now: writes.apply_batch(cur, checked, kept, now))

    def _submit(self, thread_id: str | None, apply: Callable[[Cursor, int], T]) -> Future[T]:
        return self._writer.submit(thread_id, apply)

    # -- reads ------------------------------------------------------------------

    @contextlib.contextmanager
    def _read(self, single_statement: bool = False) -> Iterator[Cursor]:
        """A cursor in one read-only snapshot (:func:`.read_cursor.read_cursor`)."""
        if self._closed:
            raise EngineClosedError("the engine is closed")
        timeout = self._pg.connect_timeout_seconds
        with read_cursor(
            self._pool, self._connect, timeout, self._reachability, single_statement
        ) as cur:
            yield cur

    def view(self, thread_id: str) -> ThreadView:
        key = self._thread_key(thread_id)
        with self._read() as cur:
            row = reads.thread_row(cur, key)
        return (
            ThreadView(thread_id, None, 0)
            if row is None
            else ThreadView(thread_id, to_epoch(row[0], self.epoch_mask), row[1])
        )

    def event_count(self, thread_id: str) -> int:
        return self.view(thread_id).end_position

    def get_turn(self, thread_id: str, turn: int, max_bytes: int | None = None) -> TurnChunk | None:
        key = self._thread_key(thread_id)
        self._check_turn(turn)
        with self._read() as cur:
            return reads.get_turn(cur, key, turn, max_bytes)

    def read_commit_order(
        self, view: ThreadView, start_position: int, budget: ReadBudget
    ) -> list[bytes]:
        with self._read() as cur:
            return reads.read_commit_order(cur, view, start_position, budget, mask=self.epoch_mask)

    def turn_cursor_at_offset(self, view: ThreadView, offset: int) -> TurnCursor | None:
        with self._read() as cur:
            return reads.turn_cursor_at_offset(cur, view, offset, mask=self.epoch_mask)

    def read_turn_order(
        self, view: ThreadView, cursor: TurnCursor, budget: ReadBudget, include_empty: bool
    ) -> tuple[list[TurnChunk], TurnCursor | None]:
        with self._read() as cur:
            return reads.read_turn_order(
                cur, view, cursor, budget, include_empty, mask=self.epoch_mask
            )

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
        """One statement, one round trip (:func:`.replay_reads.replay_step`); its
        events may run past finishes, whose frontiers then lie among them."""
        key = self._thread_key(thread_id)
        with self._read(single_statement=True) as cur:
            return replay_step(
                cur,
                key,
                thread_id,
                expected_epoch,
                start_position,
                finish_seq,
                max_events,
                watched_turn,
                max_bytes,
                self.epoch_mask,
            )

    def load_snapshot(self, key: str, version: int | None = None) -> StoredSnapshot | None:
        """As :meth:`turnstore.server.storage.lmdb.engine.LmdbEngine.load_snapshot`."""
        encoded_key = self._conversation_key(key)
        if version is not None:
            self._check_turn(version)
        with self._read() as cur:
            return operations.load_snapshot(cur, encoded_key, version)

    def list_snapshot_versions(self, key: str) -> list[SnapshotVersion]:
        """As :meth:`turnstore.server.storage.lmdb.engine.LmdbEngine.list_snapshot_versions`."""
        encoded_key = self._conversation_key(key)
        with self._read() as cur:
            return operations.list_snapshot_versions(cur, encoded_key)

    # -- operations ---------------------------------------------------------------

    def list_threads(self, start_after: str = "", limit: int = 1000) -> list[ThreadSummary]:
        """As :meth:`turnstore.server.storage.lmdb.engine.LmdbEngine.list_threads`."""
        with self._read() as cur:
            return operations.list_threads(cur, start_after, limit)

    def list_recent_threads(
        self, limit: int, keep: Callable[[str], bool] | None = None
    ) -> list[ThreadSummary]:
        """As :meth:`~turnstore.server.storage.lmdb.engine.LmdbEngine.list_recent_threads`.

        Uses the last-write index.
        """
        with self._read() as cur:
            return operations.list_recent_threads(cur, limit, keep)

    def list_keys(
        self,
        start_after: str = "",
        limit: int = 1000,
        *,
        prefix: str = "",
        end_before: str = "",
        newest_first: bool = False,
    ) -> list[KeySummary]:
        """As :meth:`turnstore.server.storage.lmdb.engine.LmdbEngine.list_keys` (a range
        scan of the partial index of live keys)."""
        key_range = KeyRange(prefix, start_after, end_before, newest_first)
        with self._read() as cur:
            return operations.list_keys(cur, key_range, limit)

    def storage_stats(self) -> StorageStats:
        """What the database holds; ``data_file_bytes`` is the size of turnstore's tables."""
        with self._read() as cur:
            return operations.storage_stats(cur)

    def space_usage(self) -> SpaceUsage:
        """All zeros: no ceiling of turnstore's (:meth:`storage_stats` has the tables' size)."""
        return SpaceUsage(0, 0, 0)

    def startup_report(self) -> dict[str, object]:
        """The backend and the database (without its password); whether its tables
        were found restored into another database (every thread got a new epoch)."""
        report: dict[str, object] = {"backend": "postgres", "database": self.database}
        if self.opened_restored_backup:
            report["restored_backup_new_epochs"] = True
        return report

    def backup(self, dest_dir: str) -> BackupResult:
        """Always BackupFailedError: the database's own tools back it up."""
        raise BackupFailedError(
            "this daemon stores in PostgreSQL, whose backups are the database's own: "
            "use pg_dump (or your provider's snapshots) on the database"
        )

    def close(self) -> None:
        """Commit every write already queued, then release every connection. Idempotent."""
        self._stop_retention()
        self._writer.close()
        if self._closed:
            return
        self._closed = True
        self._feed.close()
        self._pool.close()


__all__ = ["PostgresConfig", "PostgresEngine", "RetentionStats", "SweepResult"]
