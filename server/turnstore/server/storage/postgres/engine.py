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

from turnstore.server.storage.errors import (
    BackupFailedError,
    DatabaseUnavailableError,
    EngineClosedError,
)
from turnstore.server.storage.inputs import InputChecks
from turnstore.server.storage.interface import CommitListener, CommitObserver, new_epoch_mask
from turnstore.server.storage.postgres import operations, reads, tables, writes
from turnstore.server.storage.postgres.appends import TurnAppend
from turnstore.server.storage.postgres.listen import CommitFeed, WakeAll
from turnstore.server.storage.postgres.reachability import DOWN_WAIT_SECONDS, Reachability
from turnstore.server.storage.postgres.retention import Retention
from turnstore.server.storage.postgres.writer import Writer, _describe
from turnstore.server.storage.postgres.writes import Cursor
from turnstore.server.storage.values import (
    BackupResult,
    EngineConfig,
    KeySummary,
    NewEvent,
    PostgresConfig,
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


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, to name the database in logs and errors."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(an unparsable DSN)"
    info.pop("password", None)
    return " ".join(f"{name}={value}" for name, value in sorted(info.items()))


def _epoch_mask(conn: psycopg.Connection[Any], created: bool) -> tuple[int, bool]:
    """The epoch mask of the database, and whether it was just drawn for a restore.

    Runs in :func:`_prepare_schema`'s transaction, under its lock. The
    ``database_oid`` row remembers the database the tables were created in:
    tables restored (``pg_dump`` into another database) find another oid, and
    get a new random ``epoch_mask``, so no reader's cursor from before the
    restore matches a thread's epoch. An operator who restored into the same
    database sets ``database_oid`` to 0 for the same effect
    (docs/operations.md#backup). Tables just ``created`` get a mask of their
    own, so no two databases share epochs; those of an older turnstore keep
    mask 0 and just record their oid.
    """
    current = conn.execute(
        "SELECT oid::bigint FROM pg_database WHERE datname = current_database()"
    ).fetchone()
    assert current is not None
    rows = dict(
        conn.execute(
            "SELECT name, value FROM turnstore_meta WHERE name IN ('database_oid', 'epoch_mask')"
        ).fetchall()
    )
    mask = int(rows.get("epoch_mask", 0))
    recorded = rows.get("database_oid")
    restored = recorded is not None and int(recorded) != int(current[0])
    if restored or created:
        mask = new_epoch_mask()
        conn.execute(
            "INSERT INTO turnstore_meta VALUES ('epoch_mask', %s) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            (mask,),
        )
    if recorded is None or restored or created:
        conn.execute(
            "INSERT INTO turnstore_meta VALUES ('database_oid', %s) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            (int(current[0]),),
        )
    return mask, restored


def _prepare_schema(conn: psycopg.Connection[Any], dsn: str) -> bool:
    """Create the schema on a database without it; leave one at this version untouched.

    Returns whether it created the schema from nothing.

    A schema already at :data:`tables.SCHEMA_VERSION` gets no DDL at all:
    ``CREATE INDEX IF NOT EXISTS`` takes a SHARE lock on its table even when
    the index exists, so a daemon starting while others write would wait for
    their transactions and could deadlock with them (found by
    tests/test_postgres_crash.py: a restart failed with "deadlock detected").
    Raises ValueError for a newer schema, naming both versions.
    """
    # One daemon creates the schema at a time.
    conn.execute("SELECT pg_advisory_xact_lock(7239010012)")
    found = conn.execute("SELECT to_regclass('turnstore_meta') IS NOT NULL").fetchone()
    row = None
    if found is not None and found[0]:
        row = conn.execute(
            "SELECT value FROM turnstore_meta WHERE name = 'schema_version'"
        ).fetchone()
    version = None if row is None else int(row[0])
    if version is not None and version > tables.SCHEMA_VERSION:
        raise ValueError(
            f"the database ({redact_dsn(dsn)}) has turnstore schema version "
            f"{version}, newer than this turnstore ({tables.SCHEMA_VERSION})"
        )
    if version == tables.SCHEMA_VERSION:
        return False
    for statement in tables.CREATE:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO turnstore_meta VALUES ('schema_version', %s) "
        "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
        (tables.SCHEMA_VERSION,),
    )
    return version is None


class PostgresEngine(Retention, InputChecks):
    """turnstore's PostgreSQL backend. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, config: EngineConfig, pg: PostgresConfig) -> None:
        self.config = config
        self.limits = config.limits
        # Set by open() (_epoch_mask): the same for every daemon of a fleet.
        self.epoch_mask = 0
        # Whether open() found the tables restored into another database.
        self.opened_restored_backup = False
        self._pg = pg
        self._closed = False
        self.database = redact_dsn(pg.dsn)
        self._timeout = max(1, round(pg.connect_timeout_seconds))
        kwargs: dict[str, Any] = {"connect_timeout": self._timeout}
        self._pool = psycopg_pool.ConnectionPool(
            pg.dsn,
            min_size=1,
            max_size=pg.pool_size,
            kwargs=kwargs,
            configure=_configure_reader,
            # A connection the database dropped (a restart) is replaced, not handed out.
            check=psycopg_pool.ConnectionPool.check_connection,
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
            conn.execute(_INDEX_COSTS)
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
                created = _prepare_schema(conn, pg.dsn)
                mask, restored = _epoch_mask(conn, created)
        except psycopg.OperationalError as error:
            raise DatabaseUnavailableError(
                f"cannot reach the database ({redact_dsn(pg.dsn)}): {_describe(error)}"
            ) from None
        engine = cls(config, pg)
        engine.epoch_mask, engine.opened_restored_backup = mask, restored
        engine._pool.open(wait=False)
        return engine

    @property
    def map_size(self) -> int:
        """0: PostgreSQL reserves no map."""
        return 0

    def wait_listening(self, timeout: float) -> bool:
        """Whether the LISTEN connection is in place within ``timeout`` seconds."""
        return self._feed.listening.wait(timeout)

    def add_wake_all_listener(self, wake: WakeAll) -> None:
        """Call ``wake()`` on every tick and after the listen connection reconnects.

        Every follower should then re-read: a notification may have been lost.
        """
        self._feed.wake_all_listeners.append(wake)

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Call ``listener(thread_ids)`` after this daemon's commits and others' notifications."""
        self._writer.listeners.append(listener)

    def add_commit_observer(self, observer: CommitObserver) -> None:
        self._writer.observers.append(observer)

    # -- validation ------------------------------------------------------------

    # -- writes -----------------------------------------------------------------

    def append(
        self, thread_id: str, turn: int, events: Sequence[NewEvent], finish: bool = False
    ) -> Future[list[int]]:
        """As :meth:`turnstore.server.storage.lmdb.engine.LmdbEngine.append`."""
        key = self._thread_key(thread_id)
        self._check_turn(turn)
        encoded = self._checked_events(events, finish)
        return self._writer.submit_append(thread_id, TurnAppend(key, turn, encoded, finish))

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

    def _submit(self, thread_id: str | None, apply: Callable[[Cursor, int], T]) -> Future[T]:
        return self._writer.submit(thread_id, apply)

    # -- reads ------------------------------------------------------------------

    @contextlib.contextmanager
    def _read(self) -> Iterator[Cursor]:
        """A cursor in one read-only snapshot; DatabaseUnavailableError when unreachable.

        While the database is believed down, a read waits only briefly for
        the pool, then tries one connection of its own: the pool backs off
        between reconnection attempts after an outage, and the database may
        be back before the pool tries again.
        """
        if self._closed:
            raise EngineClosedError("the engine is closed")
        reachability = self._reachability
        down = reachability.down
        wait = DOWN_WAIT_SECONDS if down else self._pg.connect_timeout_seconds
        try:
            with contextlib.ExitStack() as stack:
                try:
                    conn = stack.enter_context(self._pool.connection(timeout=wait))
                except psycopg_pool.PoolTimeout:
                    if not down:
                        raise
                    conn = stack.enter_context(self._connect())
                    _configure_reader(conn)
                stack.enter_context(conn.transaction())
                yield stack.enter_context(conn.cursor())
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as error:
            reachability.mark_down()
            raise DatabaseUnavailableError(
                f"the database is unreachable ({_describe(error)})"
            ) from None
        reachability.mark_up()

    def view(self, thread_id: str) -> ThreadView:
        key = self._thread_key(thread_id)
        with self._read() as cur:
            row = reads.thread_row(cur, key)
        return (
            ThreadView(thread_id, None, 0) if row is None else ThreadView(thread_id, row[0], row[1])
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
            return reads.read_commit_order(cur, view, start_position, budget)

    def turn_cursor_at_offset(self, view: ThreadView, offset: int) -> TurnCursor | None:
        with self._read() as cur:
            return reads.turn_cursor_at_offset(cur, view, offset)

    def read_turn_order(
        self, view: ThreadView, cursor: TurnCursor, budget: ReadBudget, include_empty: bool
    ) -> tuple[list[TurnChunk], TurnCursor | None]:
        with self._read() as cur:
            return reads.read_turn_order(cur, view, cursor, budget, include_empty)

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
        key = self._thread_key(thread_id)
        with self._read() as cur:
            return reads.replay_step(
                cur,
                key,
                thread_id,
                expected_number,
                start_position,
                finish_seq,
                max_events,
                watched_turn,
                max_bytes,
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

    def list_keys(self, start_after: str = "", limit: int = 1000) -> list[KeySummary]:
        """As :meth:`turnstore.server.storage.lmdb.engine.LmdbEngine.list_keys`."""
        with self._read() as cur:
            return operations.list_keys(cur, start_after, limit)

    def storage_stats(self) -> StorageStats:
        """What the database holds; ``data_file_bytes`` is the size of turnstore's tables."""
        with self._read() as cur:
            return operations.storage_stats(cur)

    def space_usage(self) -> SpaceUsage:
        """The bytes of turnstore's tables; PostgreSQL has no ceiling of ours (0)."""
        return self.storage_stats().space

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


# turnstore's statements are index lookups on hot data. At PostgreSQL's
# untuned default random_page_cost (4, a spinning disk's), a table of some
# tens of thousands of rows made the planner scan the whole events table for
# an append of 200 events instead of probing its unique index 200 times: 10
# ms a statement, a quarter of the write rate. A value the DBA set stays.
_INDEX_COSTS = (
    "SELECT set_config('random_page_cost', '1.1', false) "
    "WHERE current_setting('random_page_cost')::float8 = 4"
)


def _configure_reader(conn: psycopg.Connection[Any]) -> None:
    conn.commit()  # the connection's own setup ran in a transaction
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    conn.execute(_INDEX_COSTS)
    conn.commit()


__all__ = ["PostgresConfig", "PostgresEngine", "RetentionStats", "SweepResult", "redact_dsn"]
