"""The writer thread of the PostgreSQL engine: group commit, and commit notifications.

One connection, one thread: every write waiting in the queue is applied in
one transaction, committed once, and only then resolved, exactly as the LMDB
writer does; a write refused by its checks leaves no trace, as each checks
before it changes anything. The commit also NOTIFYs :data:`tables.CHANNEL` with the ids of the
threads it changed, which wakes the followers of every daemon on the
database (:mod:`turnstore.server.pg_engine.listen`).
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

from turnstore.server.errors import DatabaseUnavailableError, EngineClosedError, EngineError
from turnstore.server.pg_engine.tables import CHANNEL
from turnstore.server.pg_engine.writes import Cursor
from turnstore.server.storage import CommitListener, CommitObserver, deliver_commit

T = TypeVar("T")

# A NOTIFY payload must stay under 8000 bytes; past this, "*" wakes everyone.
_MAX_PAYLOAD = 7000
# Deadlocks between daemons (and serialization failures) are retried this often.
_RETRIES = 5


@dataclass
class _Write:
    """One queued write: a function applied inside the shared transaction."""

    thread_id: str | None
    apply: Callable[[Cursor, int], Any]
    future: Future[Any]


def notify_payload(changed: set[str]) -> str:
    """The NOTIFY payload naming the changed threads ("*": too many to name)."""
    # ASCII: a thread id is any string, and the channel takes only valid text.
    payload = json.dumps(sorted(changed))
    return payload if len(payload) <= _MAX_PAYLOAD else "*"


class Writer:
    """The writer thread over its own connection; see the module docstring."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], max_batch: int) -> None:
        self._connect = connect
        self._max_batch = max_batch
        self._conn: psycopg.Connection[Any] | None = None
        # Writes of the current transaction that reached the database.
        self._applied = 0
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self.listeners: list[CommitListener] = []
        self.observers: list[CommitObserver] = []
        self._thread = threading.Thread(target=self._loop, name="turnstore-pg-writer")
        self._thread.start()

    def submit(self, thread_id: str | None, apply: Callable[[Cursor, int], T]) -> Future[T]:
        """Queue a write; its future resolves after the commit that carries it."""
        future: Future[T] = Future()
        with self._close_lock:
            if self._closed:
                future.set_exception(EngineClosedError("the engine is closed"))
                return future
            self._queue.put(_Write(thread_id, apply, future))
        return future

    def close(self) -> None:
        """Commit what is queued, then stop the thread and close the connection."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()
        if self._conn is not None:
            self._conn.close()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
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
        for attempt in range(_RETRIES):
            try:
                outcomes, seconds = self._transaction(batch)
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure):
                if attempt + 1 < _RETRIES:
                    continue
                failure: BaseException = DatabaseUnavailableError(
                    "the database kept aborting the write (deadlocks); nothing was written"
                )
            except psycopg.OperationalError as error:
                # The connection is gone (or going): the next try reconnects.
                with contextlib.suppress(Exception):
                    if self._conn is not None:
                        self._conn.close()
                self._conn = None
                if not self._applied and attempt == 0:
                    # Dropped before the first write reached the database (a
                    # restart since the last batch): nothing was done, so the
                    # batch goes again on a fresh connection.
                    continue
                failure = DatabaseUnavailableError(
                    f"the database is unreachable ({_describe(error)}); "
                    "the write may not be stored, retrying it is safe"
                )
            except psycopg.Error as error:
                if len(batch) > 1:
                    # One write's statement failed and aborted the transaction:
                    # each goes again alone, so only that one fails.
                    for write in batch:
                        self._commit([write])
                    return
                failure = error
            except BaseException as error:  # an engine bug: fail the batch, keep serving
                failure = error
            else:
                deliver_commit(batch, outcomes, seconds, self.listeners, self.observers)
                return
            for write in batch:
                write.future.set_exception(failure)
            return

    def _transaction(self, batch: list[_Write]) -> tuple[list[tuple[bool, Any]], float]:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        conn = self._conn
        outcomes: list[tuple[bool, Any]] = []
        self._applied = 0
        now_ns = time.time_ns()
        changed: set[str] = set()
        with conn.transaction(), conn.cursor() as cur:
            for write in batch:
                # No savepoint per write (two round trips each): every write
                # checks its preconditions before it changes anything, so a
                # refused one leaves nothing; any other failure aborts the
                # batch, whose writes then go again one by one (_commit).
                try:
                    outcomes.append((True, write.apply(cur, now_ns)))
                    self._applied += 1
                    if write.thread_id is not None:
                        changed.add(write.thread_id)
                except EngineError as error:
                    outcomes.append((False, error))
            if changed:
                cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, notify_payload(changed)))
            started = time.perf_counter()
        return outcomes, time.perf_counter() - started


def _describe(error: BaseException) -> str:
    """An error's first line: psycopg's messages name host and port, never the password."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
