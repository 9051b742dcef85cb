"""The LMDB engine's writer: one thread that applies every write waiting in its queue in
one LMDB transaction, commits it with one fsync, and only then resolves the writes'
futures (group commit); map growth and the size ceiling (the delete reserve) are
handled here.

A write is a function ``apply(txn, now_ns)`` over the shared write transaction
(those of :mod:`.turns`, :mod:`.snapshots` and :mod:`.retention`). Each checks
all its preconditions before it changes anything, so the
:class:`~turnstore.server.storage.errors.EngineError` one raises fails that
write alone and leaves no trace in the transaction the others commit.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from turnstore.server.storage.commits import deliver_commit, group_commits
from turnstore.server.storage.errors import (
    EngineClosedError,
    EngineError,
    StorageFullError,
)
from turnstore.server.storage.interface import CommitListener, CommitObserver
from turnstore.server.storage.lmdb import disk, schema
from turnstore.server.storage.lmdb.commit_sync import CommitSync
from turnstore.server.storage.lmdb.redo_journal import RedoJournal
from turnstore.server.storage.lmdb.state import LmdbState, get

T = TypeVar("T")


@dataclass
class QueuedWrite:
    """One queued write: a function applied inside the shared transaction.

    ``frees`` marks writes that only remove data (and rewrite bookkeeping):
    they may use the space reserve and are retried alone when their batch
    hits the ceiling.
    """

    thread_id: str | None
    apply: Callable[[lmdb.Transaction, int], Any]
    future: Future[Any]
    frees: bool = False


class Writer:
    """The writer thread of one LMDB environment; started here, ended by :meth:`close`."""

    def __init__(self, state: LmdbState, journal: RedoJournal | None = None) -> None:
        self._state = state
        # How commits are made durable (--commit-sync); owns the redo journal.
        self._sync = CommitSync(state.env, state.dbs, journal, state.durable)
        self._queue: queue.SimpleQueue[QueuedWrite | None] = queue.SimpleQueue()
        self._closed = False
        # Orders submits against close: nothing is queued after the sentinel.
        self._close_lock = threading.Lock()
        self._listeners: list[CommitListener] = []
        self._observers: list[CommitObserver] = []
        # The transaction id of the last no-op commit (_release_freed_pages).
        self._tick_txnid = -1
        self._thread = threading.Thread(target=self._loop, name="turnstore-writer")
        self._thread.start()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (writes submitted now fail)."""
        return self._closed

    def submit(
        self,
        thread_id: str | None,
        apply: Callable[[lmdb.Transaction, int], T],
        frees: bool = False,
    ) -> Future[T]:
        """Queue ``apply`` for the next commit; its future resolves once that is durable.

        ``thread_id`` is the thread the write changes (None: none), which the
        commit listeners learn. Fails with EngineClosedError after :meth:`close`.
        """
        future: Future[T] = Future()
        with self._close_lock:
            if self._closed:
                future.set_exception(EngineClosedError("the engine is closed"))
                return future
            self._queue.put(QueuedWrite(thread_id, apply, future, frees))
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

    def close(self) -> bool:
        """Commit every write already queued, then end the thread.

        Returns False when the writer was already closed (then nothing is
        done), True once its thread has ended.
        """
        with self._close_lock:
            if self._closed:
                return False
            self._closed = True
            self._queue.put(None)
        self._thread.join()
        self._sync.close()
        return True

    def _loop(self) -> None:
        group_commits(self._queue, self._state.config.max_writes_per_commit, self._commit)

    def _commit(self, batch: list[QueuedWrite]) -> None:
        """Apply a batch in one transaction, growing the map as needed."""
        env = self._state.env
        while True:
            outcomes: list[tuple[bool, Any]] = []
            try:
                now_ns = time.time_ns()
                txn = env.begin(write=True)
                # The writes' changes are recorded for the redo journal (--commit-sync journal).
                target = self._sync.target(txn)
                try:
                    for write in batch:
                        try:
                            outcomes.append((True, write.apply(target, now_ns)))
                        except EngineError as error:
                            outcomes.append((False, error))
                except BaseException:
                    txn.abort()
                    raise
                commit_started = time.perf_counter()
                # Durable when it returns; a failed commit aborts the transaction.
                self._sync.commit(txn, target)
                commit_seconds = time.perf_counter() - commit_started
            except lmdb.MapFullError:
                if self._grow_map() or self._release_freed_pages():
                    continue
                batch = self._fail_at_ceiling(batch)
                if batch:
                    continue  # the writes that free space, alone
                return
            except BaseException as error:  # the disk, or an engine bug: fail, keep serving
                data_dir = Path(self._state.config.data_dir)
                failure = disk.as_engine_error(error, data_dir, "the write")
                for write in batch:
                    write.future.set_exception(failure or error)
                return
            deliver_commit(batch, outcomes, commit_seconds, self._listeners, self._observers)
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
        env = self._state.env
        # Once per commit of other writes: a retried batch that frees again
        # must not tick forever.
        if env.info()["last_txnid"] == self._tick_txnid:
            return False
        if not self._state.space.take_freed_recently():
            return False
        meta = self._state.dbs[schema.META]
        try:
            with env.begin(write=True) as txn:
                version = get(txn, schema.META_SCHEMA_VERSION, meta)
                if version is None:  # written by open(): never
                    return False
                txn.put(schema.META_SCHEMA_VERSION, version, db=meta)
        except lmdb.Error:
            return False
        self._tick_txnid = env.info()["last_txnid"]
        # Not journaled: it rewrites a value unchanged, so losing it loses nothing.
        self._sync.after_untracked_commit()
        return True

    def _fail_at_ceiling(self, batch: list[QueuedWrite]) -> list[QueuedWrite]:
        """Fail a batch that does not fit under the ceiling; return what to retry.

        The writes that free space are retried on their own, unless the
        batch held nothing else (then they fail too).
        """
        retry = [write for write in batch if write.frees]
        if len(retry) == len(batch):
            retry = []
        full = StorageFullError(
            f"the database reached its size ceiling of "
            f"{self._state.config.max_map_bytes} bytes; nothing was written"
        )
        for write in batch:
            if not (write.frees and retry):
                write.future.set_exception(full)
        return retry

    def _grow_map(self) -> bool:
        """Double the map size, up to the ceiling; False when already there."""
        current = self._state.map_size
        ceiling = self._state.config.max_map_bytes
        if current >= ceiling:
            return False
        with self._state.gate.resizing():
            self._state.env.set_mapsize(min(current * 2, ceiling))
        return True
