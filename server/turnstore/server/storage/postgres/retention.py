"""Retention on PostgreSQL: removing threads and keys idle for the configured ages.

The same rules as the LMDB engine's (:mod:`turnstore.server.storage.lmdb.retention`):
a sweep finds candidates in short reads and removes them in small batches
through the writer, each removal checking the age again under the row lock,
so a thread written after the sweep found it is kept.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager
from typing import TypeVar

from turnstore.server.storage.config import EngineConfig
from turnstore.server.storage.postgres import writes
from turnstore.server.storage.postgres.writes import Cursor
from turnstore.server.storage.retention import (
    RETENTION_BATCH_ITEMS,
    RETENTION_SCAN_PAGE,
    RetentionState,
)
from turnstore.server.storage.values import RetentionStats, SweepResult

T = TypeVar("T")


class Retention:
    """The retention layer of :class:`PostgresEngine`."""

    config: EngineConfig
    _closed: bool
    _retention: RetentionState
    _retention_thread: threading.Thread | None

    def _read(self) -> AbstractContextManager[Cursor]:
        raise NotImplementedError

    def _submit(self, thread_id: str | None, apply: Callable[[Cursor, int], T]) -> Future[T]:
        raise NotImplementedError

    def _init_retention(self) -> None:
        self._retention = RetentionState()
        self._retention_thread = None
        if self.config.retention_enabled:
            self._retention_thread = threading.Thread(
                target=self._retention_loop, name="turnstore-pg-retention", daemon=True
            )
            self._retention_thread.start()

    def _stop_retention(self) -> None:
        self._retention.stop.set()
        if self._retention_thread is not None:
            self._retention_thread.join()
            self._retention_thread = None

    def remove_thread_if_idle(self, thread_id: str, cutoff_ns: int) -> Future[int | None]:
        """Remove a thread unless written at or after ``cutoff_ns``; events removed or None."""
        key = thread_id.encode("utf-8", "surrogatepass")
        return self._submit(thread_id, lambda cur, _: writes.delete_thread(cur, key, cutoff_ns))

    def remove_conversation_if_idle(self, key: str, cutoff_ns: int) -> Future[int | None]:
        """Remove a key (and its version counter) unless written at or after ``cutoff_ns``."""
        encoded = key.encode("utf-8", "surrogatepass")
        return self._submit(
            None, lambda cur, _: writes.delete_conversation(cur, encoded, cutoff_ns)
        )

    def sweep_retention(self, now_ns: int | None = None) -> SweepResult:
        """As :meth:`turnstore.server.storage.lmdb.engine.LmdbEngine.sweep_retention`."""
        now = time.time_ns() if now_ns is None else now_ns
        with self._retention.sweeping(now, lambda: self._closed):
            threads = events = keys = 0
            age = self.config.retain_threads_for_seconds
            if age is not None:
                threads, events = self._sweep(True, now - int(age * 1e9))
            age = self.config.retain_conversations_for_seconds
            if age is not None:
                keys, _ = self._sweep(False, now - int(age * 1e9))
        return SweepResult(threads, events, keys)

    def _expired(self, threads: bool, cutoff_ns: int) -> Iterator[list[bytes]]:
        """Pages of ids (keys) last written before the cutoff, in byte order."""
        table, column = (
            ("turnstore_threads", "thread_id") if threads else ("turnstore_conversations", "key")
        )
        after = b""
        while True:
            with self._read() as cur:
                cur.execute(
                    f"SELECT {column} FROM {table} WHERE last_write_ns < %s AND {column} > %s "
                    f"ORDER BY {column} LIMIT %s",
                    (cutoff_ns, after, RETENTION_SCAN_PAGE),
                )
                page = [bytes(row[0]) for row in cur.fetchall()]
            if not page:
                return
            yield page
            after = page[-1]

    def _sweep(self, threads: bool, cutoff_ns: int) -> tuple[int, int]:
        state = self._retention
        removed = weight = 0
        remove = self.remove_thread_if_idle if threads else self.remove_conversation_if_idle
        for page in self._expired(threads, cutoff_ns):
            for start in range(0, len(page), RETENTION_BATCH_ITEMS):
                batch = page[start : start + RETENTION_BATCH_ITEMS]
                batch_removed, batch_weight = state.remove_batch(
                    threads,
                    [key.decode("utf-8", "surrogatepass") for key in batch],
                    lambda key: remove(key, cutoff_ns),
                )
                removed += batch_removed
                weight += batch_weight
            if state.stop.is_set():
                break
        return removed, weight

    def retention_stats(self) -> RetentionStats:
        """What the retention sweeps did since the engine was opened."""
        return self._retention.stats(self.config.retention_enabled)

    def _retention_loop(self) -> None:
        """The background driver: one sweep per interval until the engine closes."""
        self._retention.run(self.config.retention_interval_seconds, self.sweep_retention)
