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
import fcntl
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple, TypeVar

import lmdb

from turnstore.server import records, schema
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

T = TypeVar("T")

MIB = 1024 * 1024
GIB = 1024 * MIB
_MAX_U64 = (1 << 64) - 1
# The largest key LMDB accepts in its default build.
LMDB_MAX_KEY_BYTES = 511


@dataclass(frozen=True)
class Limits:
    """Input limits the engine enforces, each raising InvalidArgumentError."""

    max_thread_id_bytes: int = 256
    max_key_bytes: int = 256
    max_event_id_bytes: int = 256
    # The encoded envelope (header fields and body) of one event.
    max_event_bytes: int = 1 * MIB
    max_events_per_append: int = 10_000
    max_snapshot_bytes: int = 32 * MIB

    def __post_init__(self) -> None:
        for name in ("max_thread_id_bytes", "max_key_bytes"):
            value = getattr(self, name)
            if not 1 <= value <= LMDB_MAX_KEY_BYTES:
                raise ValueError(f"{name} must be between 1 and {LMDB_MAX_KEY_BYTES}")
        # Event id index keys are an 8-byte thread number and the id.
        if not 1 <= self.max_event_id_bytes <= LMDB_MAX_KEY_BYTES - 8:
            raise ValueError(f"max_event_id_bytes must be between 1 and {LMDB_MAX_KEY_BYTES - 8}")
        for name in ("max_event_bytes", "max_events_per_append", "max_snapshot_bytes"):
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

    def __post_init__(self) -> None:
        if self.initial_map_bytes <= 0 or self.max_map_bytes < self.initial_map_bytes:
            raise ValueError("need 0 < initial_map_bytes <= max_map_bytes")
        if self.snapshot_versions_kept < 1:
            raise ValueError("snapshot_versions_kept must be at least 1")


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
class ThreadView:
    """A thread as of one moment: reads through it see no later events.

    ``end_position`` is the thread's event count at that moment. A view of a
    thread that does not exist has ``thread_number`` None and reads as empty.
    """

    thread_id: str
    thread_number: int | None
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
    """One queued write: a function applied inside the shared transaction."""

    thread_id: str | None
    apply: Callable[[lmdb.Transaction, int], Any]
    future: Future[Any]


CommitListener = Callable[[set[str]], None]
CommitObserver = Callable[[int, float], None]


class Engine:
    """turnstore's storage engine. Open with :meth:`open`, close with :meth:`close`.

    Writes (:meth:`append`, :meth:`finish_turn`, :meth:`clear`,
    :meth:`save_snapshot`) return a :class:`concurrent.futures.Future` that
    resolves once the write is durably committed, or fails with an
    :class:`~turnstore.server.errors.EngineError`. Reads block and return.
    """

    def __init__(self, config: EngineConfig, env: lmdb.Environment, lock_file: IO[str]) -> None:
        self.config = config
        self.limits = config.limits
        self._env = env
        self._lock_file = lock_file
        self._dbs = {name: env.open_db(name, create=False) for name in schema.ALL_DATABASES}
        self._gate = _ResizeGate()
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._listeners: list[CommitListener] = []
        self._observers: list[CommitObserver] = []
        self._writer = threading.Thread(target=self._write_loop, name="turnstore-writer")
        self._writer.start()

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    def open(cls, config: EngineConfig) -> Engine:
        """Open (creating if needed) the data directory and its LMDB environment.

        Raises :class:`DataDirLockedError` when another process holds the
        directory, and ``ValueError`` when it holds a newer schema version.
        """
        data_dir = Path(config.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        lock_file = open(data_dir / "turnstore.lock", "a+")  # noqa: SIM115 - held until close
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
        return cls(config, env, lock_file)

    def close(self) -> None:
        """Commit every write already queued, then close the environment.

        Writes submitted afterwards fail with EngineClosedError. Idempotent.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._writer.join()
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
        self, thread_id: str | None, apply: Callable[[lmdb.Transaction, int], T]
    ) -> Future[T]:
        future: Future[T] = Future()
        with self._close_lock:
            if self._closed:
                future.set_exception(EngineClosedError("the engine is closed"))
                return future
            self._queue.put(_Write(thread_id, apply, future))
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
            return self._write_turn(txn, key, turn, encoded, finish, now_ns)

        return self._submit(thread_id, apply)

    def finish_turn(self, thread_id: str, turn: int) -> Future[int]:
        """Record a turn's close barrier; resolves to the turn's event count.

        A turn never appended to becomes an empty finished turn. Fails with
        TurnAlreadyFinishedError when the turn is already finished.
        """
        key = self._thread_key(thread_id)
        self._check_turn(turn)

        def apply(txn: lmdb.Transaction, now_ns: int) -> int:
            self._write_turn(txn, key, turn, [], True, now_ns)
            value = _get(txn, key, self._dbs[schema.THREADS])
            assert value is not None
            number = schema.TRIPLE.unpack(value)[0]
            turn_value = _get(txn, schema.PAIR.pack(number, turn), self._dbs[schema.TURNS])
            assert turn_value is not None
            return schema.unpack_turn(turn_value)[1]

        return self._submit(thread_id, apply)

    def _write_turn(
        self,
        txn: lmdb.Transaction,
        key: bytes,
        turn: int,
        events: list[tuple[bytes, bytes]],
        finish: bool,
        now_ns: int,
    ) -> list[int]:
        """Append ``events`` (id, envelope) to a turn, then finish it if asked.

        Returns each event's position. An event whose id is already stored in
        this turn is not stored again: its original position is returned.
        Checks everything before writing anything.
        """
        value = _get(txn, key, self._dbs[schema.THREADS])
        if value is not None:
            number, next_position, next_finish = schema.TRIPLE.unpack(value)
        else:
            number = self._next_number(txn, schema.META_NEXT_THREAD_NUMBER)
            next_position = next_finish = 0
        ids_db = self._dbs[schema.EVENT_IDS]
        prefix = schema.U64.pack(number)
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
        turn_value = _get(txn, turn_key, self._dbs[schema.TURNS])
        count, last = 0, 0
        if turn_value is not None:
            finished, count, last = schema.unpack_turn(turn_value)
            if finished:
                if new:
                    raise TurnFinishedError(turn)
                if finish and not events:
                    raise TurnAlreadyFinishedError(turn)
                return positions  # a retry of events stored before the finish
        if not new and not finish:
            return positions  # a retry: every event is already stored
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
            schema.TRIPLE.pack(number, next_position, next_finish),
            db=self._dbs[schema.THREADS],
        )
        return positions

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
            number, next_position, _ = schema.TRIPLE.unpack(value)
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
            return int(next_position)

        return self._submit(thread_id, apply)

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
                number, latest, current = schema.TRIPLE.unpack(value)
            if expected_version is not None and expected_version != current:
                raise VersionConflictError(key, expected_version, current)
            if value is None:
                number = self._next_number(txn, schema.META_NEXT_CONVERSATION_NUMBER)
            version = latest + 1
            header = schema.SNAPSHOT_HEADER.pack(now_ns, len(content_type_bytes))
            txn.put(
                schema.PAIR.pack(number, version), header + content_type_bytes + data, db=snapshots
            )
            if version > kept:
                txn.delete(schema.PAIR.pack(number, version - kept), db=snapshots)
            txn.put(encoded_key, schema.TRIPLE.pack(number, version, version), db=conversations)
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
            number, latest, _ = schema.TRIPLE.unpack(value)
            removed = _delete_prefix(txn, self._dbs[schema.SNAPSHOTS], schema.U64.pack(number))
            txn.put(encoded_key, schema.TRIPLE.pack(number, latest, 0), db=conversations)
            return removed

        return self._submit(None, apply)

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
                if not self._grow_map():
                    full = StorageFullError(
                        f"the database reached its size ceiling of "
                        f"{self.config.max_map_bytes} bytes; nothing was written"
                    )
                    for write in batch:
                        write.future.set_exception(full)
                    return
                continue
            except BaseException as error:  # an engine bug: fail the batch, keep serving
                for write in batch:
                    write.future.set_exception(error)
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
        number, next_position, _ = schema.TRIPLE.unpack(value)
        return ThreadView(thread_id, number, next_position)

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
            number = schema.TRIPLE.unpack(value)[0]
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
        if value is None or schema.TRIPLE.unpack(value)[0] != view.thread_number:
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
            number, end_position, finish_count = schema.TRIPLE.unpack(value)
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
            number, _, current = schema.TRIPLE.unpack(value)
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
            prefix = schema.U64.pack(schema.TRIPLE.unpack(value)[0])
            with txn.cursor(db=self._dbs[schema.SNAPSHOTS]) as cursor:
                if cursor.set_range(prefix):
                    for snapshot_key, record in _pairs(cursor):
                        if not snapshot_key.startswith(prefix):
                            break
                        version = schema.PAIR.unpack(snapshot_key)[1]
                        out.append(_decode_snapshot(version, record))
        out.reverse()
        return out


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
    """What one :meth:`Engine.replay_step` read found.

    ``events`` are the records at positions ``[start, next_position)``, in
    order. ``finishes`` are the finishes from the requested sequence number
    on whose frontier is at most ``next_position``. ``at_end`` says that both
    were read to the end of what is stored. ``cleared`` says the thread is not
    the one with the expected number any more (nothing else is set then).
    """

    thread_number: int | None
    events: list[bytes]
    next_position: int
    finishes: list[FinishRecord]
    next_finish_seq: int
    at_end: bool
    cleared: bool = False
    watched_turn_finished: bool = False
