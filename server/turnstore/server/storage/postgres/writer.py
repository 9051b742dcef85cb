"""The writer thread of the PostgreSQL engine: group commit, and commit notifications.

One connection, one thread: every write waiting in the queue is applied in
one transaction, committed once, and only then resolved, exactly as the LMDB
writer does; a write refused by its checks leaves no trace, as each checks
before it changes anything. The commit also NOTIFYs :data:`tables.CHANNEL` with the ids of the
threads it changed, which wakes the followers of every daemon on the
database (:mod:`turnstore.server.storage.postgres.listen`).
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

from turnstore.server.storage.commits import deliver_commit, group_commits
from turnstore.server.storage.errors import DatabaseUnavailableError, EngineClosedError, EngineError
from turnstore.server.storage.interface import CommitListener, CommitObserver
from turnstore.server.storage.postgres.appends import AppendRun, TurnAppend
from turnstore.server.storage.postgres.reachability import Reachability
from turnstore.server.storage.postgres.tables import CHANNEL
from turnstore.server.storage.postgres.writes import Cursor

T = TypeVar("T")

# A NOTIFY payload must stay under 8000 bytes; past this, "*" wakes everyone.
_MAX_PAYLOAD = 7000
# Deadlocks between daemons (and serialization failures) are retried this often.
_RETRIES = 5


@dataclass
class _Write:
    """One queued write: an append (the batched hot path) or a function to apply."""

    thread_id: str | None
    append: TurnAppend | None
    apply: Callable[[Cursor, int], Any] | None
    future: Future[Any]


def notify_payload(changed: set[str]) -> str:
    """The NOTIFY payload naming the changed threads ("*": too many to name)."""
    # ASCII: a thread id is any string, and the channel takes only valid text.
    payload = json.dumps(sorted(changed))
    return payload if len(payload) <= _MAX_PAYLOAD else "*"


class Writer:
    """The writer thread over its own connection; see the module docstring."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        max_batch: int,
        reachability: Reachability,
    ) -> None:
        self._connect = connect
        self._reachability = reachability
        self._max_batch = max_batch
        self._conn: psycopg.Connection[Any] | None = None
        # Whether the current transaction's COMMIT was sent: past that, a
        # dropped connection leaves its outcome unknown.
        self._commit_sent = False
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self.listeners: list[CommitListener] = []
        self.observers: list[CommitObserver] = []
        self._thread = threading.Thread(target=self._loop, name="turnstore-pg-writer")
        self._thread.start()

    def submit(self, thread_id: str | None, apply: Callable[[Cursor, int], T]) -> Future[T]:
        """Queue a write; its future resolves after the commit that carries it."""
        return self._put(_Write(thread_id, None, apply, Future()))

    def submit_append(self, thread_id: str, append: TurnAppend) -> Future[Any]:
        """Queue an append or finish; it resolves as :class:`TurnAppend` says."""
        return self._put(_Write(thread_id, append, None, Future()))

    def _put(self, write: _Write) -> Future[Any]:
        with self._close_lock:
            if self._closed:
                write.future.set_exception(EngineClosedError("the engine is closed"))
            else:
                self._queue.put(write)
        return write.future

    def backend_pid(self) -> int | None:
        """The process id of the writer's database session (None while it has none).

        The listener skips the notifications this session sent: the commit
        already woke this daemon's followers.
        """
        conn = self._conn
        return None if conn is None or conn.closed else conn.info.backend_pid

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
        group_commits(self._queue, self._max_batch, self._commit)

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
                if self._connection_lost():
                    self._reachability.mark_down()
                    # The connection is gone: the next try reconnects.
                    with contextlib.suppress(Exception):
                        if self._conn is not None:
                            self._conn.close()
                    self._conn = None
                    if not self._commit_sent and attempt == 0:
                        # Dropped before the COMMIT was sent (a restart since
                        # the last batch, say): the database rolled it all
                        # back, so the batch goes again, once, on a fresh one.
                        continue
                    failure = DatabaseUnavailableError(
                        f"the database is unreachable ({_describe(error)}); "
                        "the write may not be stored, retrying it is safe"
                    )
                elif len(batch) > 1:
                    # An error of the database's own (a lock timeout, a cancel,
                    # a full disk) rolled the batch back: each goes again alone.
                    for write in batch:
                        self._commit([write])
                    return
                else:
                    failure = DatabaseUnavailableError(
                        f"the database refused the write ({_describe(error)}); "
                        "nothing was written, retrying it is safe"
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
                self._reachability.mark_up()
                deliver_commit(batch, outcomes, seconds, self.listeners, self.observers)
                return
            for write in batch:
                write.future.set_exception(failure)
            return

    def _connection_lost(self) -> bool:
        """Whether the writer's connection is gone (none, closed or broken)."""
        conn = self._conn
        return conn is None or conn.closed or conn.broken

    def _transaction(self, batch: list[_Write]) -> tuple[list[tuple[bool, Any]], float]:
        self._commit_sent = False
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        conn = self._conn
        try:
            return self._apply_and_commit(conn, batch)
        except BaseException:
            # The transaction is open (or failed): end it before the next batch.
            try:
                if not conn.closed:
                    conn.execute("ROLLBACK")
            except Exception:
                conn.close()
            raise

    def _apply_and_commit(
        self, conn: psycopg.Connection[Any], batch: list[_Write]
    ) -> tuple[list[tuple[bool, Any]], float]:
        """BEGIN, every write in queue order, NOTIFY and COMMIT, in as few round trips as may be.

        Consecutive appends go as one :class:`AppendRun` (two round trips
        for all of them); any other write runs alone between runs, on the
        same transaction. No savepoint per write (two round trips each):
        every write checks its preconditions before it changes anything, so
        a refused one leaves nothing; any other failure aborts the batch,
        whose writes then go again one by one (:meth:`_commit`).
        """
        now_ns = time.time_ns()
        outcomes: list[tuple[bool, Any]] = []
        cur = conn.cursor()
        began = False
        unsent: AppendRun | None = None  # applied in memory, its rows not yet sent

        def queue_what_comes_first() -> None:
            """BEGIN before the first statement; the rows of the run applied before."""
            nonlocal began, unsent
            if not began:
                cur.execute("BEGIN")
                began = True
            if unsent is not None:
                unsent.queue_writes(cur, now_ns)
                unsent = None

        index = 0
        while index < len(batch):
            end = index
            while end < len(batch) and batch[end].append is not None:
                end += 1
            if end > index:
                run = AppendRun([write.append for write in batch[index:end] if write.append])
                with conn.pipeline():
                    queue_what_comes_first()
                    run.queue_reads(cur)
                missing = run.load()
                for _ in range(_RETRIES):
                    if not missing:
                        break
                    # Created here, or by another daemon that committed first;
                    # missing again only if a clear removed it in between.
                    with conn.pipeline():
                        run.queue_creates(cur, missing, now_ns)
                        run.queue_reads(cur, missing)
                    missing = run.load()
                if missing:
                    raise pg_errors.SerializationFailure("threads kept vanishing while created")
                outcomes.extend(run.apply(now_ns))
                unsent, index = run, end
                continue
            write = batch[index]
            assert write.apply is not None
            with conn.pipeline():
                queue_what_comes_first()
            try:
                outcomes.append((True, write.apply(cur, now_ns)))
            except EngineError as error:
                outcomes.append((False, error))
            index += 1
        changed = {
            write.thread_id
            for write, (ok, _) in zip(batch, outcomes, strict=True)
            if ok and write.thread_id is not None
        }
        started = time.perf_counter()
        with conn.pipeline():
            queue_what_comes_first()
            if changed:
                cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, notify_payload(changed)))
            self._commit_sent = True
            cur.execute("COMMIT")
        return outcomes, time.perf_counter() - started


def _describe(error: BaseException) -> str:
    """An error's first line: psycopg's messages name host and port, never the password."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
