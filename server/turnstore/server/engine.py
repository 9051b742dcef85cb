"""The storage engine: turn-scoped event streams and snapshots in LMDB.

Writes go through one writer thread that commits every write waiting in its
queue in one LMDB transaction, fsyncs once, and then resolves each write's
future (group commit). A write's future resolves only after its transaction
is durably committed. Each write checks all its preconditions before it
changes anything, so a rejected write leaves no trace in the shared
transaction.

Reads are plain blocking methods, safe to call from any thread; each uses its
own short read transaction. Reads that span several calls (streams of chunks)
take a :class:`ThreadView` first and are bounded by it.

The engine never imports gRPC or generated code; it raises the exceptions of
:mod:`turnstore.server.errors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import lmdb

from turnstore.server import backups, disk, records, schema
from turnstore.server.errors import (
    DataDirLockedError,
    EngineClosedError,
    EngineError,
    EventIdConflictError,
    InvalidArgumentError,
    StorageFullError,
    ThreadClearedError,
    TurnAlreadyFinishedError,
    TurnFinishedError,
    VersionConflictError,
)
from turnstore.server.space import (
    SpaceGuard,
    default_reserve,
    estimate_events_bytes,
    estimate_value_bytes,
)
from turnstore.server.values import (
    LMDB_MAX_KEY_BYTES,
    MIB,
    BackupResult,
    EngineConfig,
    FinishRecord,
    KeySummary,
    NewEvent,
    ReadBudget,
    ReplayStep,
    RetentionStats,
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

_MAX_U64 = (1 << 64) - 1


class _ResizeGate:
    """Lets many readers in at once, or the map resizer alone.

    LMDB may only change its map size while this process has no open
    transaction, so readers hold the gate for the length of one transaction.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def resizing(self) -> Iterator[None]:
        with self._cond:
            self._resizing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


@dataclass
class _Write:
    """One queued write: a function applied inside the shared transaction.

    ``frees`` marks writes that only remove data (and rewrite bookkeeping):
    they may use the space reserve and are retried alone when their batch
    hits the ceiling.
    """

    thread_id: str | None
    apply: Callable[[lmdb.Transaction, int], Any]
    future: Future[Any]
    frees: bool = False


CommitListener = Callable[[set[str]], None]
CommitObserver = Callable[[int, float], None]


class Engine:
    """turnstore's storage engine. Open with :meth:`open`, close with :meth:`close`.

    Writes (:meth:`append`, :meth:`finish_turn`, :meth:`clear`,
    :meth:`save_snapshot`) return a :class:`concurrent.futures.Future` that
    resolves once the write is durably committed, or fails with an
    :class:`~turnstore.server.errors.EngineError`. Reads block and return.

    Operations (docs/operations.md): :meth:`list_threads`, :meth:`list_keys`
    and :meth:`storage_stats` are reads; :meth:`backup` copies the database
    and blocks for the copy; :meth:`sweep_retention` removes what the
    configured ages expire, through the writer queue in small batches. When
    an age is set, a background thread runs it every
    ``retention_interval_seconds`` until :meth:`close`.
    """

    def __init__(self, config: EngineConfig, env: lmdb.Environment, lock_file: IO[str]) -> None:
        self.config = config
        self.limits = config.limits
        self._env = env
        self._lock_file = lock_file
        self._dbs = {name: env.open_db(name, create=False) for name in schema.ALL_DATABASES}
        reserve = config.delete_reserve_bytes
        self.space = SpaceGuard(
            [*self._dbs.values(), env.open_db(None)],
            int(env.stat()["psize"]),
            config.max_map_bytes,
            default_reserve(config.max_map_bytes) if reserve is None else reserve,
        )
        self._backup_journal = backups.BackupJournal(Path(config.data_dir))
        # The transaction id of the last no-op commit (_release_freed_pages).
        self._tick_txnid = -1
        # What :meth:`open` found of backups cut short (the daemon logs it).
        self.removed_partial_backups: list[Path] = []
        self.partial_backup_problems: list[str] = []
        self._gate = _ResizeGate()
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._listeners: list[CommitListener] = []
        self._observers: list[CommitObserver] = []
        self._writer = threading.Thread(target=self._write_loop, name="turnstore-writer")
        self._writer.start()
        self._retention = _RetentionState()
        self._retention_thread: threading.Thread | None = None
        if config.retention_enabled:
            self._retention_thread = threading.Thread(
                target=self._retention_loop, name="turnstore-retention", daemon=True
            )
            self._retention_thread.start()

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    def open(cls, config: EngineConfig) -> Engine:
        """Open (creating if needed) the data directory and its LMDB environment.

        Raises :class:`DataDirLockedError` when another process holds the
        directory, and ``ValueError`` when it holds a newer schema version.
        """
        data_dir = Path(config.data_dir)
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _make_owner_only(data_dir)
        lock_fd = os.open(data_dir / "turnstore.lock", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        lock_file = os.fdopen(lock_fd, "a+")
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            lock_file.close()
            raise DataDirLockedError(
                f"data directory {str(data_dir)!r} is in use by another turnstore "
                f"process (pid {holder}); stop it or choose another --data-dir"
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        try:
            data_file = data_dir / "data.mdb"
            existing = data_file.stat().st_size if data_file.exists() else 0
            map_size = min(max(config.initial_map_bytes, existing), config.max_map_bytes)
            map_size = max(map_size, existing)
            env = lmdb.open(
                str(data_dir),
                map_size=map_size,
                max_dbs=len(schema.ALL_DATABASES),
                max_readers=config.max_readers,
                sync=True,
                metasync=True,
                readahead=False,
                subdir=True,
                mode=0o600,
            )
            with env.begin(write=True) as txn:
                for name in schema.ALL_DATABASES:
                    env.open_db(name, txn=txn, create=True)
                meta = env.open_db(schema.META, txn=txn)
                stored = _get(txn, schema.META_SCHEMA_VERSION, meta)
                if stored is None:
                    txn.put(
                        schema.META_SCHEMA_VERSION, schema.U64.pack(schema.SCHEMA_VERSION), db=meta
                    )
                elif schema.U64.unpack(stored)[0] > schema.SCHEMA_VERSION:
                    raise ValueError(
                        f"data directory {str(data_dir)!r} has schema version "
                        f"{schema.U64.unpack(stored)[0]}, newer than this turnstore "
                        f"({schema.SCHEMA_VERSION})"
                    )
        except BaseException:
            lock_file.close()
            raise
        # Leftovers of backups a killed daemon could not remove; none is running yet.
        removed, problems = backups.BackupJournal(data_dir).clean()
        engine = cls(config, env, lock_file)
        engine.removed_partial_backups = removed
        engine.partial_backup_problems = problems
        return engine

    def close(self) -> None:
        """Commit every write already queued, then close the environment.

        Writes submitted afterwards fail with EngineClosedError. Idempotent.
        """
        self._retention.stop.set()
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._writer.join()
        if self._retention_thread is not None:
            # It ends at its next step: its writes now fail with EngineClosedError.
            self._retention_thread.join()
        self._env.close()
        self._lock_file.close()

    @property
    def map_size(self) -> int:
        """The current LMDB map size in bytes."""
        return int(self._env.info()["map_size"])

    # -- validation --------------------------------------------------------

    @staticmethod
    def _utf8(name: str, value: str, limit: int) -> bytes:
        if not value:
            raise InvalidArgumentError(name, "must not be empty")
        encoded = value.encode("utf-8", "surrogatepass")
        if len(encoded) > limit:
            raise InvalidArgumentError(
                name, f"is {len(encoded)} bytes of UTF-8, over the limit of {limit}"
            )
        return encoded

    def _thread_key(self, thread_id: str) -> bytes:
        return self._utf8("thread_id", thread_id, self.limits.max_thread_id_bytes)

    @staticmethod
    def _check_turn(turn: int) -> None:
        if not 0 <= turn <= _MAX_U64:
            raise InvalidArgumentError("turn", f"must be between 0 and {_MAX_U64}")

    # -- writes ------------------------------------------------------------

    def _submit(
        self,
        thread_id: str | None,
        apply: Callable[[lmdb.Transaction, int], T],
        frees: bool = False,
    ) -> Future[T]:
        future: Future[T] = Future()
        with self._close_lock:
            if self._closed:
                future.set_exception(EngineClosedError("the engine is closed"))
                return future
            self._queue.put(_Write(thread_id, apply, future, frees))
        return future

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Call ``listener`` after every commit with the ids of the threads it changed.

        It runs on the writer thread after the commit is durable and the
        writes' futures are resolved, so it must be quick and must not block
        (hand the work to another thread or event loop). Its exceptions are
        ignored.
        """
        self._listeners.append(listener)

    def add_commit_observer(self, observer: CommitObserver) -> None:
        """Call ``observer(writes, seconds)`` after every commit, for metrics.

        ``writes`` is how many writes shared the transaction and ``seconds``
        how long its commit (the fsync) took. Same rules as listeners.
        """
        self._observers.append(observer)

    def append(
        self, thread_id: str, turn: int, events: Sequence[NewEvent], finish: bool = False
    ) -> Future[list[int]]:
        """Append events, in order, to the end of one turn, atomically.

        Creates the thread and the turn as needed. Resolves to the positions
        given to the events. With ``finish``, the turn is also finished in the
        same commit (``events`` may then be empty). Idempotent by event id:
        an event whose id is already stored in this turn keeps its original
        position and is not stored again, even if the turn was finished
        since. Fails with TurnFinishedError when the turn is finished and an
        event is new (TurnAlreadyFinishedError for a bare finish),
        EventIdConflictError when an id is stored in another turn, and
        InvalidArgumentError (raised at once, not through the future) for an
        empty batch or input over a limit.
        """
        key = self._thread_key(thread_id)
        self._check_turn(turn)
        if not events and not finish:
            raise InvalidArgumentError("events", "must hold at least one event")
        if len(events) > self.limits.max_events_per_append:
            raise InvalidArgumentError(
                "events",
                f"holds {len(events)} events, over the limit of "
                f"{self.limits.max_events_per_append} per append",
            )
        encoded = [
            (event.event_id.encode("utf-8", "surrogatepass"), event.envelope) for event in events
        ]
        max_id, max_event = self.limits.max_event_id_bytes, self.limits.max_event_bytes
        for index, (event_id, envelope) in enumerate(encoded):
            if not event_id or len(event_id) > max_id or len(envelope) > max_event:
                self._utf8(f"events[{index}].event_id", events[index].event_id, max_id)
                raise InvalidArgumentError(
                    f"events[{index}]",
                    f"is {len(envelope)} bytes encoded, over the limit of {max_event}",
                )

        def apply(txn: lmdb.Transaction, now_ns: int) -> list[int]:
            return self._write_turn(txn, key, turn, encoded, finish, now_ns)[0]

        return self._submit(thread_id, apply)

    def finish_turn(self, thread_id: str, turn: int) -> Future[int]:
        """Record a turn's close barrier; resolves to the turn's event count.

        A turn never appended to becomes an empty finished turn. Fails with
        TurnAlreadyFinishedError when the turn is already finished.
        """
        key = self._thread_key(thread_id)
        self._check_turn(turn)

        def apply(txn: lmdb.Transaction, now_ns: int) -> int:
            return self._write_turn(txn, key, turn, [], True, now_ns)[1]

        return self._submit(thread_id, apply)

    def _write_turn(
        self,
        txn: lmdb.Transaction,
        key: bytes,
        turn: int,
        events: list[tuple[bytes, bytes]],
        finish: bool,
        now_ns: int,
    ) -> tuple[list[int], int]:
        """Append ``events`` (id, envelope) to a turn, then finish it if asked.

        Returns each event's position and the turn's event count. An event
        whose id is already stored in this turn is not stored again: its
        original position is returned.
        Checks everything, the space for what it adds included, before
        writing anything.
        """
        value = _get(txn, key, self._dbs[schema.THREADS])
        if value is not None:
            number, next_position, next_finish, _ = schema.unpack_thread(value)
        else:
            number = next_position = next_finish = 0  # numbered once admitted, below
        ids_db = self._dbs[schema.EVENT_IDS]
        prefix = schema.U64.pack(number)
        stored_ids: dict[Any, Any] = {}
        if value is not None:
            with txn.cursor(db=ids_db) as cursor:
                stored_ids = dict(cursor.getmulti([prefix + event_id for event_id, _ in events]))
        positions: list[int] = []
        new: list[tuple[bytes, bytes, int]] = []
        batch_ids: dict[bytes, int] = {}
        for event_id, envelope in events:
            known = batch_ids.get(event_id)
            if known is None and stored_ids:
                stored = stored_ids.get(prefix + event_id)
                if stored is not None:
                    known, stored_turn = schema.PAIR.unpack(stored)
                    if stored_turn != turn:
                        raise EventIdConflictError(event_id.decode(), stored_turn, known)
            if known is None:
                known = next_position + len(new)
                batch_ids[event_id] = known
                new.append((event_id, envelope, known))
            positions.append(known)
        turn_key = schema.PAIR.pack(number, turn)
        turn_value = _get(txn, turn_key, self._dbs[schema.TURNS]) if value is not None else None
        count, last = 0, 0
        if turn_value is not None:
            finished, count, last = schema.unpack_turn(turn_value)
            if finished:
                if new:
                    raise TurnFinishedError(turn)
                if finish and not events:
                    raise TurnAlreadyFinishedError(turn)
                return positions, count  # a retry of events stored before the finish
        if not new and not finish:
            return positions, count  # a retry: every event is already stored
        added = sum(len(item[0]) + len(item[1]) for item in new)
        estimate = estimate_events_bytes(len(new), added, self.limits.max_event_id_bytes)
        self.space.admit(txn, estimate + 2 * len(key) + 256)
        if value is None:
            number = self._next_number(txn, schema.META_NEXT_THREAD_NUMBER)
            prefix = schema.U64.pack(number)
            turn_key = schema.PAIR.pack(number, turn)
        if new:
            first = new[0][2]
            values = records.encode_batch(first, turn, now_ns, [item[1] for item in new])
            pair, triple = schema.PAIR.pack, schema.TRIPLE.pack
            with txn.cursor(db=self._dbs[schema.EVENTS]) as cursor:
                cursor.putmulti(
                    zip([pair(number, first + n) for n in range(len(new))], values, strict=True)
                )
            with txn.cursor(db=self._dbs[schema.TURN_EVENTS]) as cursor:
                cursor.putmulti([(triple(number, turn, first + n), b"") for n in range(len(new))])
            with txn.cursor(db=ids_db) as cursor:
                cursor.putmulti([(prefix + item[0], pair(item[2], turn)) for item in new])
            count, last, next_position = count + len(new), new[-1][2], new[-1][2] + 1
        if finish:
            finish_value = schema.QUAD.pack(turn, next_position, count, last)
            txn.put(
                schema.PAIR.pack(number, next_finish),
                finish_value,
                db=self._dbs[schema.TURN_FINISHES],
            )
            next_finish += 1
        txn.put(turn_key, schema.pack_turn(finish, count, last), db=self._dbs[schema.TURNS])
        txn.put(
            key,
            schema.pack_thread(number, next_position, next_finish, now_ns),
            db=self._dbs[schema.THREADS],
        )
        return positions, count

    def clear(self, thread_id: str) -> Future[int]:
        """Remove a thread entirely; resolves to the number of events removed.

        Succeeds (with 0) for an unknown thread. The thread's next write
        starts it afresh: positions from 0, every turn number free.
        """
        key = self._thread_key(thread_id)

        def apply(txn: lmdb.Transaction, now_ns: int) -> int:
            value = _get(txn, key, self._dbs[schema.THREADS])
            if value is None:
                return 0
            record = schema.unpack_thread(value)
            self._delete_thread(txn, key, record.number)
            return record.next_position

        return self._submit(thread_id, apply, frees=True)

    def _delete_thread(self, txn: lmdb.Transaction, key: bytes, number: int) -> None:
        """Delete a thread's entry and everything stored under its number."""
        prefix = schema.U64.pack(number)
        for name in (
            schema.EVENTS,
            schema.TURN_EVENTS,
            schema.TURNS,
            schema.TURN_FINISHES,
            schema.EVENT_IDS,
        ):
            _delete_prefix(txn, self._dbs[name], prefix)
        txn.delete(key, db=self._dbs[schema.THREADS])
        self.space.note_freed()

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
        encoded_key = self._utf8("key", key, self.limits.max_key_bytes)
        if len(data) > self.limits.max_snapshot_bytes:
            raise InvalidArgumentError(
                "data",
                f"is {len(data)} bytes, over the snapshot limit of "
                f"{self.limits.max_snapshot_bytes}",
            )
        content_type_bytes = content_type.encode("utf-8")
        if len(content_type_bytes) > 255:
            raise InvalidArgumentError("content_type", "is over the limit of 255 bytes")
        kept = self.config.snapshot_versions_kept

        def apply(txn: lmdb.Transaction, now_ns: int) -> int:
            conversations = self._dbs[schema.CONVERSATIONS]
            snapshots = self._dbs[schema.SNAPSHOTS]
            value = _get(txn, encoded_key, conversations)
            if value is None:
                number, latest, current = 0, 0, 0
            else:
                number, latest, current, _ = schema.unpack_conversation(value)
            if expected_version is not None and expected_version != current:
                raise VersionConflictError(key, expected_version, current)
            self.space.admit(
                txn, estimate_value_bytes(len(data) + 64) + estimate_value_bytes(len(key) + 32)
            )
            if value is None:
                number = self._next_number(txn, schema.META_NEXT_CONVERSATION_NUMBER)
            version = latest + 1
            header = schema.SNAPSHOT_HEADER.pack(now_ns, len(content_type_bytes))
            txn.put(
                schema.PAIR.pack(number, version), header + content_type_bytes + data, db=snapshots
            )
            if version > kept:
                txn.delete(schema.PAIR.pack(number, version - kept), db=snapshots)
            txn.put(
                encoded_key,
                schema.pack_conversation(number, version, version, now_ns),
                db=conversations,
            )
            return version

        return self._submit(None, apply)

    def delete_snapshots(self, key: str) -> Future[int]:
        """Delete every kept version of a key; resolves to how many there were.

        Succeeds (with 0) for an unknown key. The key's version counter is
        kept, so the next save gets a higher version than any before.
        """
        encoded_key = self._utf8("key", key, self.limits.max_key_bytes)

        def apply(txn: lmdb.Transaction, now_ns: int) -> int:
            conversations = self._dbs[schema.CONVERSATIONS]
            value = _get(txn, encoded_key, conversations)
            if value is None:
                return 0
            number, latest, _, _ = schema.unpack_conversation(value)
            removed = _delete_prefix(txn, self._dbs[schema.SNAPSHOTS], schema.U64.pack(number))
            txn.put(
                encoded_key, schema.pack_conversation(number, latest, 0, now_ns), db=conversations
            )
            self.space.note_freed()
            return removed

        return self._submit(None, apply, frees=True)

    def _next_number(self, txn: lmdb.Transaction, counter: bytes) -> int:
        meta = self._dbs[schema.META]
        value = _get(txn, counter, meta)
        number = schema.U64.unpack(value)[0] if value is not None else 1
        txn.put(counter, schema.U64.pack(number + 1), db=meta)
        return number

    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.config.max_writes_per_commit:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Write]) -> None:
        """Apply a batch in one transaction, growing the map as needed."""
        while True:
            outcomes: list[tuple[bool, Any]] = []
            try:
                now_ns = time.time_ns()
                txn = self._env.begin(write=True)
                try:
                    for write in batch:
                        try:
                            outcomes.append((True, write.apply(txn, now_ns)))
                        except EngineError as error:
                            outcomes.append((False, error))
                except BaseException:
                    txn.abort()
                    raise
                commit_started = time.perf_counter()
                txn.commit()  # the fsync; a failed commit aborts the transaction
                commit_seconds = time.perf_counter() - commit_started
            except lmdb.MapFullError:
                if self._grow_map() or self._release_freed_pages():
                    continue
                batch = self._fail_at_ceiling(batch)
                if batch:
                    continue  # the writes that free space, alone
                return
            except BaseException as error:  # the disk, or an engine bug: fail, keep serving
                failure = disk.as_engine_error(error, Path(self.config.data_dir), "the write")
                for write in batch:
                    write.future.set_exception(failure or error)
                return
            changed: set[str] = set()
            for write, (ok, result) in zip(batch, outcomes, strict=True):
                if ok:
                    write.future.set_result(result)
                    if write.thread_id is not None:
                        changed.add(write.thread_id)
                else:
                    write.future.set_exception(result)
            if changed:
                for listener in self._listeners:
                    with contextlib.suppress(Exception):
                        listener(changed)
            for observer in self._observers:
                with contextlib.suppress(Exception):
                    observer(len(batch), commit_seconds)
            return

    def _release_freed_pages(self) -> bool:
        """Commit a no-op write if pages freed lately may wait for one; True if it did.

        LMDB reuses a page freed by transaction k only from transaction k+2
        on (the snapshot before k stays valid until then), and a transaction
        that fails does not count. Right after a clear at the ceiling, every
        write would fail for want of the pages the clear freed, until some
        other write commits: this is that write (it rewrites the schema
        version, a page or two), after which the batch is retried.
        """
        # Once per commit of other writes: a retried batch that frees again
        # must not tick forever.
        if self._env.info()["last_txnid"] == self._tick_txnid:
            return False
        if not self.space.take_freed_recently():
            return False
        meta = self._dbs[schema.META]
        try:
            with self._env.begin(write=True) as txn:
                version = _get(txn, schema.META_SCHEMA_VERSION, meta)
                if version is None:  # written by open(): never
                    return False
                txn.put(schema.META_SCHEMA_VERSION, version, db=meta)
        except lmdb.Error:
            return False
        self._tick_txnid = self._env.info()["last_txnid"]
        return True

    def _fail_at_ceiling(self, batch: list[_Write]) -> list[_Write]:
        """Fail a batch that does not fit under the ceiling; return what to retry.

        The writes that free space are retried on their own, unless the
        batch held nothing else (then they fail too).
        """
        retry = [write for write in batch if write.frees]
        if len(retry) == len(batch):
            retry = []
        full = StorageFullError(
            f"the database reached its size ceiling of "
            f"{self.config.max_map_bytes} bytes; nothing was written"
        )
        for write in batch:
            if not (write.frees and retry):
                write.future.set_exception(full)
        return retry

    def _grow_map(self) -> bool:
        """Double the map size, up to the ceiling; False when already there."""
        current = self.map_size
        if current >= self.config.max_map_bytes:
            return False
        with self._gate.resizing():
            self._env.set_mapsize(min(current * 2, self.config.max_map_bytes))
        return True

    # -- reads -------------------------------------------------------------

    @contextlib.contextmanager
    def _read(self) -> Iterator[lmdb.Transaction]:
        with self._gate.reading(), self._env.begin(buffers=False) as txn:
            yield txn

    def view(self, thread_id: str) -> ThreadView:
        """Capture a thread's current extent for a bounded multi-part read."""
        key = self._thread_key(thread_id)
        with self._read() as txn:
            value = _get(txn, key, self._dbs[schema.THREADS])
        if value is None:
            return ThreadView(thread_id, None, 0)
        record = schema.unpack_thread(value)
        return ThreadView(thread_id, record.number, record.next_position)

    def event_count(self, thread_id: str) -> int:
        """The number of events in a thread; 0 for an unknown thread."""
        return self.view(thread_id).end_position

    def get_turn(self, thread_id: str, turn: int) -> TurnChunk | None:
        """One whole turn, or None for an unknown thread or turn."""
        key = self._thread_key(thread_id)
        self._check_turn(turn)
        with self._read() as txn:
            value = _get(txn, key, self._dbs[schema.THREADS])
            if value is None:
                return None
            number = schema.unpack_thread(value).number
            turn_value = _get(txn, schema.PAIR.pack(number, turn), self._dbs[schema.TURNS])
            if turn_value is None:
                return None
            finished, _, _ = schema.unpack_turn(turn_value)
            events, _ = self._turn_records(txn, number, turn, -1, _MAX_U64, None)
            return TurnChunk(turn, finished, events)

    def _turn_records(
        self,
        txn: lmdb.Transaction,
        number: int,
        turn: int,
        after_position: int,
        end_position: int,
        budget: ReadBudget | None,
        skip: int = 0,
    ) -> tuple[list[bytes], int]:
        """Records of one turn after a position and before an end, in append order.

        The first ``skip`` matching events are passed over without being read.
        Returns the records and the position of the last event passed over or
        read (``after_position`` when none).
        """
        prefix = schema.PAIR.pack(number, turn)
        events_db = self._dbs[schema.EVENTS]
        out: list[bytes] = []
        last = after_position
        with txn.cursor(db=self._dbs[schema.TURN_EVENTS]) as cursor:
            if not cursor.set_range(schema.TRIPLE.pack(number, turn, after_position + 1)):
                return out, last
            for key in _keys(cursor):
                if not key.startswith(prefix):
                    break
                position = schema.TRIPLE.unpack(key)[2]
                if position >= end_position:
                    break
                last = position
                if skip:
                    skip -= 1
                    continue
                record = _get(txn, schema.PAIR.pack(number, position), events_db)
                if record is not None:
                    out.append(record)
                    if budget is not None and budget.spend(record):
                        break
        return out, last

    def _check_view(self, txn: lmdb.Transaction, view: ThreadView) -> int | None:
        """The view's thread number, or raise if the thread was cleared since."""
        if view.thread_number is None:
            return None
        value = _get(
            txn, view.thread_id.encode("utf-8", "surrogatepass"), self._dbs[schema.THREADS]
        )
        if value is None or schema.unpack_thread(value).number != view.thread_number:
            raise ThreadClearedError(view.thread_id)
        return view.thread_number

    def read_commit_order(
        self, view: ThreadView, start_position: int, budget: ReadBudget
    ) -> list[bytes]:
        """Records from ``start_position`` on, below the view's end, within ``budget``.

        An empty list means the read reached the view's end.
        Raises ThreadClearedError if the thread was cleared after the view.
        """
        with self._read() as txn:
            number = self._check_view(txn, view)
            if number is None or start_position >= view.end_position:
                return []
            out: list[bytes] = []
            with txn.cursor(db=self._dbs[schema.EVENTS]) as cursor:
                if not cursor.set_range(schema.PAIR.pack(number, start_position)):
                    return out
                for key, value in _pairs(cursor):
                    got_number, position = schema.PAIR.unpack(key)
                    if got_number != number or position >= view.end_position:
                        break
                    out.append(value)
                    if budget.spend(value):
                        break
            return out

    def turn_cursor_at_offset(self, view: ThreadView, offset: int) -> TurnCursor | None:
        """The turn-order cursor that skips the first ``offset`` events.

        None when the offset is at or past the end of the thread.
        """
        with self._read() as txn:
            number = self._check_view(txn, view)
            if number is None:
                return None
            remaining = offset
            prefix = schema.U64.pack(number)
            with txn.cursor(db=self._dbs[schema.TURNS]) as cursor:
                if not cursor.set_range(prefix):
                    return None
                for key, value in _pairs(cursor):
                    if not key.startswith(prefix):
                        break
                    turn = schema.PAIR.unpack(key)[1]
                    _, count, _ = schema.unpack_turn(value)
                    if remaining < count:
                        return TurnCursor(turn=turn, skip=remaining)
                    remaining -= count
            return None

    def read_turn_order(
        self, view: ThreadView, cursor: TurnCursor, budget: ReadBudget, include_empty: bool
    ) -> tuple[list[TurnChunk], TurnCursor | None]:
        """Turn-ordered records from ``cursor`` on, within ``budget``.

        Returns the chunks read (a turn may be split across calls) and the
        cursor to continue from, or None when the view is exhausted. With
        ``include_empty``, turns without events appear as empty chunks.
        Raises ThreadClearedError if the thread was cleared after the view.
        """
        chunks: list[TurnChunk] = []
        with self._read() as txn:
            number = self._check_view(txn, view)
            if number is None:
                return chunks, None
            prefix = schema.U64.pack(number)
            with txn.cursor(db=self._dbs[schema.TURNS]) as turns:
                if not turns.set_range(schema.PAIR.pack(number, cursor.turn)):
                    return chunks, None
                for key, value in _pairs(turns):
                    if not key.startswith(prefix):
                        break
                    turn = schema.PAIR.unpack(key)[1]
                    finished, _, _ = schema.unpack_turn(value)
                    resuming = turn == cursor.turn
                    after = cursor.after_position if resuming else -1
                    events, last = self._turn_records(
                        txn,
                        number,
                        turn,
                        after,
                        view.end_position,
                        budget,
                        cursor.skip if resuming else 0,
                    )
                    fresh = after < 0 and not (resuming and cursor.skip)
                    if events or (include_empty and fresh):
                        chunks.append(TurnChunk(turn, finished, events))
                    if budget.spent:
                        return chunks, TurnCursor(turn=turn, after_position=last)
            return chunks, None

    def replay_step(
        self,
        thread_id: str,
        expected_number: int | None,
        start_position: int,
        finish_seq: int | None,
        max_events: int,
        watched_turn: int | None = None,
        max_bytes: int = 4 * MIB,
    ) -> ReplayStep:
        """One step of a replay: the next events and the finishes they pass.

        ``expected_number`` is the thread number seen so far (None: none
        yet); a different or missing number now means the thread was
        cleared. ``finish_seq`` None starts at the first finish whose
        frontier is at or after ``start_position``. With ``watched_turn``,
        reports whether that turn is finished now. It returns at most
        ``max_events`` events and stops after the one that reaches
        ``max_bytes``.
        """
        key = self._thread_key(thread_id)
        with self._read() as txn:
            value = _get(txn, key, self._dbs[schema.THREADS])
            if value is None:
                if expected_number is not None:
                    return ReplayStep(None, [], start_position, [], 0, True, cleared=True)
                return ReplayStep(None, [], start_position, [], 0, True)
            number, end_position, finish_count, _ = schema.unpack_thread(value)
            if expected_number is not None and number != expected_number:
                return ReplayStep(None, [], start_position, [], 0, True, cleared=True)
            # Finishes pending from here, up to the furthest frontier this
            # step could reach; frontiers never decrease along the sequence.
            reach = min(end_position, start_position + max_events)
            pending: list[tuple[int, FinishRecord]] = []
            resume_seq = finish_count
            skipping = finish_seq is None
            first_seq = finish_seq or 0
            with txn.cursor(db=self._dbs[schema.TURN_FINISHES]) as cursor:
                if first_seq < finish_count and cursor.set_range(
                    schema.PAIR.pack(number, first_seq)
                ):
                    for finish_key, finish_value in _pairs(cursor):
                        got_number, seq = schema.PAIR.unpack(finish_key)
                        if got_number != number:
                            break
                        turn, frontier, count, last = schema.QUAD.unpack(finish_value)
                        if skipping and frontier < start_position:
                            continue
                        skipping = False
                        if frontier > reach or len(pending) >= max_events:
                            resume_seq = seq
                            break
                        record = FinishRecord(turn, count, last if count else None, frontier)
                        pending.append((seq, record))
            # Events stop at the first pending finish, so that a step's events
            # all precede its finishes.
            stop = min(reach, pending[0][1].frontier) if pending else reach
            events: list[bytes] = []
            if start_position < stop:
                with txn.cursor(db=self._dbs[schema.EVENTS]) as cursor:
                    if cursor.set_range(schema.PAIR.pack(number, start_position)):
                        for event_key, event_record in _pairs(cursor):
                            got_number, position = schema.PAIR.unpack(event_key)
                            if got_number != number or position >= stop:
                                break
                            events.append(event_record)
                            max_bytes -= len(event_record)
                            if max_bytes <= 0:
                                break
            next_position = start_position + len(events)
            finishes = [record for _, record in pending if record.frontier <= next_position]
            if len(finishes) < len(pending):
                resume_seq = pending[len(finishes)][0]
            watched = False
            if watched_turn is not None:
                turn_value = _get(
                    txn, schema.PAIR.pack(number, watched_turn), self._dbs[schema.TURNS]
                )
                watched = turn_value is not None and schema.unpack_turn(turn_value)[0]
            at_end = next_position >= end_position and resume_seq >= finish_count
            return ReplayStep(
                number, events, next_position, finishes, resume_seq, at_end, False, watched
            )

    def load_snapshot(self, key: str, version: int | None = None) -> StoredSnapshot | None:
        """The latest snapshot under a key, or the given kept version.

        None when the key was never saved, was deleted, or the version is not
        kept.
        """
        encoded_key = self._utf8("key", key, self.limits.max_key_bytes)
        if version is not None:
            self._check_turn(version)
        with self._read() as txn:
            value = _get(txn, encoded_key, self._dbs[schema.CONVERSATIONS])
            if value is None:
                return None
            number, _, current, _ = schema.unpack_conversation(value)
            wanted = current if version is None else version
            if not wanted:
                return None
            record = _get(txn, schema.PAIR.pack(number, wanted), self._dbs[schema.SNAPSHOTS])
        if record is None:
            return None
        return _decode_snapshot(wanted, record)

    def list_snapshot_versions(self, key: str) -> list[StoredSnapshot]:
        """The kept versions of a key, newest first, with their data.

        Empty for an unknown or deleted key.
        """
        encoded_key = self._utf8("key", key, self.limits.max_key_bytes)
        out: list[StoredSnapshot] = []
        with self._read() as txn:
            value = _get(txn, encoded_key, self._dbs[schema.CONVERSATIONS])
            if value is None:
                return out
            prefix = schema.U64.pack(schema.unpack_conversation(value).number)
            with txn.cursor(db=self._dbs[schema.SNAPSHOTS]) as cursor:
                if cursor.set_range(prefix):
                    for snapshot_key, record in _pairs(cursor):
                        if not snapshot_key.startswith(prefix):
                            break
                        version = schema.PAIR.unpack(snapshot_key)[1]
                        out.append(_decode_snapshot(version, record))
        out.reverse()
        return out

    # -- operations: listing, statistics, backup, retention ----------------

    def _page(
        self,
        db_name: bytes,
        start_after: str,
        limit: int,
        keep: Callable[[bytes], bool] | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` entries of a database after a key, in key order."""
        after = start_after.encode("utf-8", "surrogatepass")
        out: list[tuple[bytes, bytes]] = []
        with self._read() as txn, txn.cursor(db=self._dbs[db_name]) as cursor:
            # A key longer than LMDB allows sorts after its truncation.
            found = cursor.set_range(after[:LMDB_MAX_KEY_BYTES]) if after else cursor.first()
            if not found:
                return out
            for key, value in _pairs(cursor):
                if after and key <= after:
                    continue
                if keep is None or keep(value):
                    out.append((key, value))
                    if len(out) >= limit:
                        break
        return out

    def list_threads(self, start_after: str = "", limit: int = 1000) -> list[ThreadSummary]:
        """Up to ``limit`` threads after ``start_after`` ("": from the first).

        Threads come in the byte order of their UTF-8 ids. Each call is one
        read transaction; a listing in several calls sees threads created or
        removed in between, or not.
        """
        out: list[ThreadSummary] = []
        for key, value in self._page(schema.THREADS, start_after, limit):
            record = schema.unpack_thread(value)
            out.append(
                ThreadSummary(
                    _decode_key(key),
                    record.next_position,
                    record.next_finish_seq,
                    record.last_write_ns,
                )
            )
        return out

    def list_keys(self, start_after: str = "", limit: int = 1000) -> list[KeySummary]:
        """Up to ``limit`` conversation keys holding a snapshot, after ``start_after``.

        Keys come in the byte order of their UTF-8 form; deleted keys are
        left out. Consistency as for :meth:`list_threads`.
        """
        pages = self._page(
            schema.CONVERSATIONS,
            start_after,
            limit,
            lambda value: schema.unpack_conversation(value).current_version != 0,
        )
        out: list[KeySummary] = []
        for key, value in pages:
            record = schema.unpack_conversation(value)
            out.append(KeySummary(_decode_key(key), record.current_version, record.last_write_ns))
        return out

    def storage_stats(self) -> StorageStats:
        """What the database holds, counted in one read transaction.

        Entry counts come from LMDB's own statistics (constant time);
        ``conversations`` scans the conversation keys, as deleted keys stay
        (they keep their version counters) but hold no snapshot.
        """
        with self._read() as txn:

            def entries(name: bytes) -> int:
                return int(txn.stat(self._dbs[name])["entries"])

            conversations = 0
            with txn.cursor(db=self._dbs[schema.CONVERSATIONS]) as cursor:
                for value in cursor.iternext(keys=False, values=True):
                    if schema.unpack_conversation(_bytes(value)).current_version:
                        conversations += 1
            stats = StorageStats(
                threads=entries(schema.THREADS),
                events=entries(schema.EVENTS),
                turns=entries(schema.TURNS),
                finished_turns=entries(schema.TURN_FINISHES),
                conversations=conversations,
                snapshot_versions=entries(schema.SNAPSHOTS),
                data_file_bytes=0,
                space=self.space.usage(txn),
            )
        data_file = Path(self.config.data_dir) / "data.mdb"
        return dataclasses.replace(stats, data_file_bytes=data_file.stat().st_size)

    def space_usage(self) -> SpaceUsage:
        """How close the database is to its ceiling, measured in one short read."""
        with self._read() as txn:
            return self.space.usage(txn)

    def backup(self, dest_dir: str) -> BackupResult:
        """Write a consistent, compacted copy of the database to ``dest_dir``.

        Blocks for the length of the copy; run it off the event loop. The
        copy is taken in one LMDB read transaction (``mdb_env_copy2`` with
        compaction), so writers go on meanwhile; only a growth of the map
        waits for it to end. ``dest_dir`` must be an absolute path that does
        not exist or is an empty directory, in an existing parent directory.
        The copy is written to a temporary directory beside it, fsynced, and
        renamed to ``dest_dir``, so ``dest_dir`` either holds a whole backup
        or is unchanged. The result is a data directory: ``turnstore serve
        --data-dir DEST`` serves it. Raises InvalidArgumentError for an
        unacceptable ``dest_dir`` (also a component over NAME_MAX) and
        BackupFailedError when writing fails (nothing is left behind then; a
        copy cut short by a kill is removed at the next open, see
        :mod:`turnstore.server.backups`).
        """
        dest = backups.check_destination(dest_dir)
        if self._closed:
            raise EngineClosedError("the engine is closed")
        return backups.write_backup(self._env, self._gate.reading, dest, self._backup_journal)

    def remove_thread_if_idle(self, thread_id: str, cutoff_ns: int) -> Future[int | None]:
        """Remove a thread unless it was written at or after ``cutoff_ns``.

        The check is made inside the write transaction, so a thread written
        after a sweep found it expired is kept. Resolves to the number of
        events removed, or None when the thread was kept or does not exist.
        Followers of the thread see it cleared.
        """
        key = thread_id.encode("utf-8", "surrogatepass")

        def apply(txn: lmdb.Transaction, now_ns: int) -> int | None:
            value = _get(txn, key, self._dbs[schema.THREADS])
            if value is None:
                return None
            record = schema.unpack_thread(value)
            if record.last_write_ns >= cutoff_ns:
                return None
            self._delete_thread(txn, key, record.number)
            return record.next_position

        return self._submit(thread_id, apply, frees=True)

    def remove_conversation_if_idle(self, key: str, cutoff_ns: int) -> Future[int | None]:
        """Remove a conversation key unless it was written at or after ``cutoff_ns``.

        Removes its kept snapshots and its version counter (a later save
        starts again at version 1). Checked inside the write transaction like
        :meth:`remove_thread_if_idle`. Resolves to the number of snapshot
        versions removed, or None when the key was kept or does not exist.
        """
        encoded_key = key.encode("utf-8", "surrogatepass")

        def apply(txn: lmdb.Transaction, now_ns: int) -> int | None:
            conversations = self._dbs[schema.CONVERSATIONS]
            value = _get(txn, encoded_key, conversations)
            if value is None:
                return None
            record = schema.unpack_conversation(value)
            if record.last_write_ns >= cutoff_ns:
                return None
            prefix = schema.U64.pack(record.number)
            removed = _delete_prefix(txn, self._dbs[schema.SNAPSHOTS], prefix)
            txn.delete(encoded_key, db=conversations)
            self.space.note_freed()
            return removed

        return self._submit(None, apply, frees=True)

    def sweep_retention(self, now_ns: int | None = None) -> SweepResult:
        """Remove the threads and conversation keys the configured ages expire.

        Expired means last written before ``now_ns`` (default: the current
        time) minus the age; an age of None expires nothing. Blocks until done;
        run it off the event loop. It scans in short read transactions and
        removes in small batches through the writer queue (at most
        ``RETENTION_BATCH_ITEMS`` threads or keys, and about
        ``RETENTION_BATCH_EVENTS`` events, waiting per batch), so appends
        interleave with it. One sweep runs at a time. Raises what a removal
        raised (EngineClosedError once the engine closes, StorageFullError).
        """
        now = time.time_ns() if now_ns is None else now_ns
        state = self._retention
        with state.sweep_lock:
            if self._closed:
                raise EngineClosedError("the engine is closed")
            result = SweepResult(0, 0, 0)
            try:
                age = self.config.retain_threads_for_seconds
                if age is not None:
                    threads, events = self._sweep(
                        schema.THREADS, now - int(age * 1e9), self.remove_thread_if_idle
                    )
                    result = dataclasses.replace(
                        result, removed_threads=threads, removed_events=events
                    )
                age = self.config.retain_conversations_for_seconds
                if age is not None:
                    keys, _ = self._sweep(
                        schema.CONVERSATIONS,
                        now - int(age * 1e9),
                        self.remove_conversation_if_idle,
                    )
                    result = dataclasses.replace(result, removed_conversations=keys)
            except BaseException as error:
                with state.lock:
                    state.last_error = f"{type(error).__name__}: {error}"
                raise
            with state.lock:
                state.sweeps += 1
                state.last_sweep_ns = now
                state.last_error = None
            return result

    def _sweep(
        self,
        db_name: bytes,
        cutoff_ns: int,
        remove: Callable[[str, int], Future[int | None]],
    ) -> tuple[int, int]:
        """Remove the expired entries of THREADS or CONVERSATIONS; (entries, weight) removed."""
        state = self._retention
        removed = weight = 0
        after = b""
        while True:
            candidates, resume = self._scan_expired(db_name, cutoff_ns, after)
            for batch in _batches(candidates):
                futures = [remove(_decode_key(key), cutoff_ns) for key, _ in batch]
                batch_removed = batch_weight = 0
                for future in futures:
                    outcome = future.result()
                    if outcome is not None:
                        batch_removed += 1
                        batch_weight += outcome
                removed += batch_removed
                weight += batch_weight
                with state.lock:
                    if db_name == schema.THREADS:
                        state.removed_threads += batch_removed
                        state.removed_events += batch_weight
                    else:
                        state.removed_conversations += batch_removed
            if resume is None or state.stop.is_set():
                return removed, weight
            after = resume

    def _scan_expired(
        self, db_name: bytes, cutoff_ns: int, after: bytes
    ) -> tuple[list[tuple[bytes, int]], bytes | None]:
        """Expired entries among the next ``RETENTION_SCAN_PAGE`` after ``after``.

        Returns (key, weight) pairs, the weight being a thread's event count
        (1 for a conversation key), and the key to resume after, or None at
        the end. Both databases' values end with last_write_unix_nanos.
        """
        threads = db_name == schema.THREADS
        candidates: list[tuple[bytes, int]] = []
        scanned = 0
        with self._read() as txn, txn.cursor(db=self._dbs[db_name]) as cursor:
            if not (cursor.set_range(after) if after else cursor.first()):
                return candidates, None
            for key, value in _pairs(cursor):
                if after and key == after:
                    continue
                _, count, _, last_write = schema.QUAD.unpack(value)
                if last_write < cutoff_ns:
                    candidates.append((key, count if threads else 1))
                scanned += 1
                if scanned >= RETENTION_SCAN_PAGE:
                    return candidates, key
        return candidates, None

    def retention_stats(self) -> RetentionStats:
        """What the retention sweeps did since the engine was opened."""
        state = self._retention
        with state.lock:
            return RetentionStats(
                enabled=self.config.retention_enabled,
                sweeps=state.sweeps,
                removed_threads=state.removed_threads,
                removed_events=state.removed_events,
                removed_conversations=state.removed_conversations,
                last_sweep_ns=state.last_sweep_ns,
                last_error=state.last_error,
            )

    def _retention_loop(self) -> None:
        """The background driver: one sweep per interval until the engine closes."""
        while not self._retention.stop.wait(self.config.retention_interval_seconds):
            try:
                self.sweep_retention()
            except EngineClosedError:
                return
            except Exception:  # kept in retention_stats().last_error; retried next time
                continue


def _make_owner_only(data_dir: Path) -> None:
    """Take group and other access away from the data files older versions left open.

    New files are created owner-only; the directory's own mode is left as
    the operator set it.
    """
    for name in ("data.mdb", "lock.mdb", "turnstore.lock"):
        with contextlib.suppress(FileNotFoundError):
            mode = (data_dir / name).stat().st_mode
            if mode & 0o077:
                os.chmod(data_dir / name, mode & 0o700)


def _decode_snapshot(version: int, record: bytes) -> StoredSnapshot:
    saved_at, content_type_length = schema.SNAPSHOT_HEADER.unpack_from(record)
    start = schema.SNAPSHOT_HEADER.size
    content_type = record[start : start + content_type_length].decode("utf-8")
    return StoredSnapshot(version, content_type, record[start + content_type_length :], saved_at)


def _bytes(value: bytes | memoryview) -> bytes:
    """Narrow an LMDB result: read transactions here never return buffers."""
    return value if isinstance(value, bytes) else bytes(value)


def _get(txn: lmdb.Transaction, key: bytes, db: Any) -> bytes | None:
    value = txn.get(key, db=db)
    return None if value is None else _bytes(value)


def _pairs(cursor: lmdb.Cursor) -> Iterator[tuple[bytes, bytes]]:
    for key, value in cursor.iternext():
        yield _bytes(key), _bytes(value)


def _keys(cursor: lmdb.Cursor) -> Iterator[bytes]:
    for key in cursor.iternext(keys=True, values=False):
        yield _bytes(key)


def _delete_prefix(txn: lmdb.Transaction, db: Any, prefix: bytes) -> int:
    """Delete every key that starts with ``prefix``; return how many."""
    removed = 0
    with txn.cursor(db=db) as cursor:
        if not cursor.set_range(prefix):
            return removed
        while _bytes(cursor.key()).startswith(prefix):
            if not cursor.delete():
                break
            removed += 1
    return removed


# Retention works through these: entries examined per read transaction, and
# per removal batch at most this many threads or keys and (roughly, at least
# one thread) this many events, so that a batch is one short write.
RETENTION_SCAN_PAGE = 1000
RETENTION_BATCH_ITEMS = 64
RETENTION_BATCH_EVENTS = 20_000


def _batches(candidates: list[tuple[bytes, int]]) -> Iterator[list[tuple[bytes, int]]]:
    """Split (key, weight) pairs into removal batches within the batch limits."""
    batch: list[tuple[bytes, int]] = []
    weight = 0
    for candidate in candidates:
        if batch and (
            len(batch) >= RETENTION_BATCH_ITEMS or weight + candidate[1] > RETENTION_BATCH_EVENTS
        ):
            yield batch
            batch, weight = [], 0
        batch.append(candidate)
        weight += candidate[1]
    if batch:
        yield batch


def _decode_key(key: bytes) -> str:
    """A thread id or conversation key as stored, back to text."""
    return key.decode("utf-8", "surrogatepass")


@dataclass
class _RetentionState:
    """The engine's retention bookkeeping; counters are guarded by ``lock``."""

    stop: threading.Event = field(default_factory=threading.Event)
    sweep_lock: threading.Lock = field(default_factory=threading.Lock)
    lock: threading.Lock = field(default_factory=threading.Lock)
    sweeps: int = 0
    removed_threads: int = 0
    removed_events: int = 0
    removed_conversations: int = 0
    last_sweep_ns: int = 0
    last_error: str | None = None
