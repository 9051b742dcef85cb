"""The LMDB engine's shared state, validation and helpers.

The engine is built in layers (writer, turns, snapshots, reads, operations,
retention), each a mixin over the one below; :class:`_State` declares what
they share, as :meth:`turnstore.server.storage.lmdb.engine.Engine.__init__` sets it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import lmdb

from turnstore.server.storage.errors import (
    EngineClosedError,
)
from turnstore.server.storage.inputs import InputChecks
from turnstore.server.storage.interface import CommitListener, CommitObserver
from turnstore.server.storage.lmdb import backups
from turnstore.server.storage.lmdb.space import (
    SpaceGuard,
)
from turnstore.server.storage.values import (
    EngineConfig,
    Limits,
    RetentionStats,
)

T = TypeVar("T")


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

    def stats(self, enabled: bool) -> RetentionStats:
        """What the sweeps did so far, read under the lock."""
        with self.lock:
            return RetentionStats(
                enabled=enabled,
                sweeps=self.sweeps,
                removed_threads=self.removed_threads,
                removed_events=self.removed_events,
                removed_conversations=self.removed_conversations,
                last_sweep_ns=self.last_sweep_ns,
                last_error=self.last_error,
            )

    @contextlib.contextmanager
    def sweeping(self, now_ns: int, is_closed: Callable[[], bool]) -> Iterator[None]:
        """Around one sweep: one at a time, none once closed, its outcome counted.

        EngineClosedError when ``is_closed()``; an error the sweep raises is
        kept in ``last_error`` and raised on; a sweep that ends counts.
        """
        with self.sweep_lock:
            if is_closed():
                raise EngineClosedError("the engine is closed")
            try:
                yield
            except BaseException as error:
                with self.lock:
                    self.last_error = f"{type(error).__name__}: {error}"
                raise
            with self.lock:
                self.sweeps += 1
                self.last_sweep_ns = now_ns
                self.last_error = None

    def run(self, interval_seconds: float, sweep: Callable[[], object]) -> None:
        """The background driver: one ``sweep`` per interval until ``stop`` is set.

        Ends at EngineClosedError; any other failure is kept by the sweep in
        ``last_error`` and retried at the next interval.
        """
        while not self.stop.wait(interval_seconds):
            try:
                sweep()
            except EngineClosedError:
                return
            except Exception:  # kept in last_error; retried next time
                continue


class _State(InputChecks):
    """What every layer of the engine shares (set by Engine.__init__)."""

    config: EngineConfig
    limits: Limits
    # XORed into thread numbers to make the epochs readers see (storage.epochs).
    epoch_mask: int
    space: SpaceGuard
    removed_partial_backups: list[Path]
    partial_backup_problems: list[str]
    _env: lmdb.Environment
    _lock_file: IO[str]
    _dbs: dict[bytes, Any]
    _backup_journal: backups.BackupJournal
    _tick_txnid: int
    _gate: _ResizeGate
    _queue: queue.SimpleQueue[_Write | None]
    _closed: bool
    _close_lock: threading.Lock
    _listeners: list[CommitListener]
    _observers: list[CommitObserver]
    _writer: threading.Thread
    _retention: _RetentionState
    _retention_thread: threading.Thread | None

    @property
    def map_size(self) -> int:
        """The current LMDB map size in bytes."""
        return int(self._env.info()["map_size"])

    @contextlib.contextmanager
    def _read(self) -> Iterator[lmdb.Transaction]:
        with self._gate.reading(), self._env.begin(buffers=False) as txn:
            yield txn

    @contextlib.contextmanager
    def _read_in_place(self) -> Iterator[lmdb.Transaction]:
        """A read transaction whose values are buffers on the map, valid until the next call.

        For reads that only measure or peek at values: ``len`` of a buffer
        reads none of its pages. The helpers here (``_get``, ``_pairs``,
        ``_keys``) copy what they return, so they work in it too.
        """
        with self._gate.reading(), self._env.begin(buffers=True) as txn:
            yield txn


def _bytes(value: bytes | memoryview) -> bytes:
    """An LMDB result as bytes (a copy when it is a buffer of an in-place read)."""
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
