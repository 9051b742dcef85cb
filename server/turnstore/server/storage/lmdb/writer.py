"""The writer thread and group commit: every write waiting in the queue is applied in one
LMDB transaction, committed with one fsync, and only then resolved; map growth and the
ceiling (the delete reserve) are handled here.

One layer of the LMDB engine (see :mod:`turnstore.server.storage.lmdb.engine`): a mixin over
:class:`_State`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
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
from turnstore.server.storage.lmdb.state import (
    _get,
    _State,
    _Write,
)

T = TypeVar("T")


class _Writer(_State):
    """The writer thread and group commit: every write waiting in the queue is applied in one."""

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

    def _next_number(self, txn: lmdb.Transaction, counter: bytes) -> int:
        meta = self._dbs[schema.META]
        value = _get(txn, counter, meta)
        number = schema.U64.unpack(value)[0] if value is not None else 1
        txn.put(counter, schema.U64.pack(number + 1), db=meta)
        return number

    def _write_loop(self) -> None:
        group_commits(self._queue, self.config.max_writes_per_commit, self._commit)

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
