"""Retention: removing what was not written for the configured ages, in small writes that
interleave with the others.

One layer of the LMDB engine (see :mod:`turnstore.server.storage.lmdb.engine`): a mixin over
:class:`_Operations`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import lmdb

from turnstore.server.storage.lmdb import schema
from turnstore.server.storage.lmdb.operations import _Operations
from turnstore.server.storage.lmdb.state import (
    RETENTION_SCAN_PAGE,
    _batches,
    _decode_key,
    _delete_prefix,
    _get,
    _pairs,
)
from turnstore.server.storage.values import (
    RetentionStats,
    SweepResult,
)

T = TypeVar("T")


class _Retention(_Operations):
    """Retention: removing what was not written for the configured ages, in small writes that."""

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
            _delete_prefix(txn, self._dbs[schema.SNAPSHOT_VERSIONS], prefix)
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
        with self._retention.sweeping(now, lambda: self._closed):
            result = SweepResult(0, 0, 0)
            age = self.config.retain_threads_for_seconds
            if age is not None:
                threads, events = self._sweep(
                    schema.THREADS, now - int(age * 1e9), self.remove_thread_if_idle
                )
                result = dataclasses.replace(result, removed_threads=threads, removed_events=events)
            age = self.config.retain_conversations_for_seconds
            if age is not None:
                keys, _ = self._sweep(
                    schema.CONVERSATIONS,
                    now - int(age * 1e9),
                    self.remove_conversation_if_idle,
                )
                result = dataclasses.replace(result, removed_conversations=keys)
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
        return self._retention.stats(self.config.retention_enabled)

    def _retention_loop(self) -> None:
        """The background driver: one sweep per interval until the engine closes."""
        self._retention.run(self.config.retention_interval_seconds, self.sweep_retention)
