"""Retention on LMDB: removing the threads and conversation keys not written for the
configured ages, in small writes that interleave with the others.

A sweep (:meth:`Sweeper.sweep`) scans in short read transactions and removes in
batches through the writer queue, waiting per batch; each removal
(:func:`remove_thread_if_idle`, :func:`remove_conversation_if_idle`, applied
in the writer's transaction) checks the age again, so what was written after
the sweep found it is kept. The bookkeeping both engines share is
:mod:`turnstore.server.storage.retention`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import lmdb

from turnstore.server.storage.lmdb import live_keys, schema
from turnstore.server.storage.lmdb.state import LmdbState, decode_key, delete_prefix, get, pairs
from turnstore.server.storage.lmdb.turns import delete_thread
from turnstore.server.storage.lmdb.writer import Writer
from turnstore.server.storage.retention import (
    RETENTION_BATCH_ITEMS,
    RETENTION_SCAN_PAGE,
    RetentionState,
)
from turnstore.server.storage.values import SweepResult

# Besides at most RETENTION_BATCH_ITEMS threads, a removal batch holds
# (roughly, at least one thread) this many events, so that it is one short write.
RETENTION_BATCH_EVENTS = 20_000

Remove = Callable[[str, int], Future[int | None]]


def remove_thread_if_idle(
    state: LmdbState, txn: lmdb.Transaction, key: bytes, cutoff_ns: int
) -> int | None:
    """Remove a thread unless it was written at or after ``cutoff_ns`` (a write that frees).

    The number of events removed, or None when the thread was kept or does
    not exist.
    """
    value = get(txn, key, state.dbs[schema.THREADS])
    if value is None:
        return None
    record = schema.unpack_thread(value)
    if record.last_write_ns >= cutoff_ns:
        return None
    delete_thread(state, txn, key, record.number)
    return record.next_position


def remove_conversation_if_idle(
    state: LmdbState, txn: lmdb.Transaction, encoded_key: bytes, cutoff_ns: int
) -> int | None:
    """Remove a key, its snapshots and version counter, unless written at or after
    ``cutoff_ns`` (a write that frees).

    The number of snapshot versions removed, or None when the key was kept
    or does not exist.
    """
    conversations = state.dbs[schema.CONVERSATIONS]
    record_key = schema.record_key(encoded_key)
    value = get(txn, record_key, conversations)
    if value is None:
        return None
    record = schema.unpack_conversation(value)
    if record.last_write_ns >= cutoff_ns:
        return None
    prefix = schema.U64.pack(record.number)
    removed = delete_prefix(txn, state.dbs[schema.SNAPSHOTS], prefix)
    delete_prefix(txn, state.dbs[schema.SNAPSHOT_VERSIONS], prefix)
    txn.delete(record_key, db=conversations)
    live_keys.remove(state, txn, encoded_key)
    state.space.note_freed()
    return removed


class Sweeper:
    """The engine's retention: removals, the sweep, its bookkeeping and background thread.

    The thread (when an age is set) runs a sweep every
    ``retention_interval_seconds`` until :meth:`stop`; it ends at its next
    step once the writer is closed (its writes then fail with
    EngineClosedError).
    """

    def __init__(self, state: LmdbState, writer: Writer) -> None:
        self._state = state
        self._writer = writer
        self.bookkeeping = RetentionState()
        self._thread: threading.Thread | None = None
        config = state.config
        if config.retention_enabled:
            self._thread = threading.Thread(
                target=self.bookkeeping.run,
                args=(config.retention_interval_seconds, self.sweep),
                name="turnstore-retention",
                daemon=True,
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop sweeping: no new background sweep, and a sweep under way ends after its page."""
        self.bookkeeping.stop.set()

    def join(self) -> None:
        """Wait for the background thread (after the writer is closed, so that it ends)."""
        if self._thread is not None:
            self._thread.join()

    def remove_thread_if_idle(self, thread_id: str, cutoff_ns: int) -> Future[int | None]:
        """Queue :func:`remove_thread_if_idle` for a thread; the events removed, or None."""
        key = thread_id.encode("utf-8", "surrogatepass")
        state = self._state
        return self._writer.submit(
            thread_id,
            lambda txn, _: remove_thread_if_idle(state, txn, key, cutoff_ns),
            frees=True,
        )

    def remove_conversation_if_idle(self, key: str, cutoff_ns: int) -> Future[int | None]:
        """Queue :func:`remove_conversation_if_idle` for a key; the versions removed, or None."""
        encoded_key = key.encode("utf-8", "surrogatepass")
        state = self._state
        return self._writer.submit(
            None,
            lambda txn, _: remove_conversation_if_idle(state, txn, encoded_key, cutoff_ns),
            frees=True,
        )

    def sweep(self, now_ns: int | None = None) -> SweepResult:
        """Remove what the configured ages expire as of ``now_ns`` (default: now).

        Expired means last written before ``now_ns`` minus the age; an age of
        None expires nothing. Blocks until done. One sweep runs at a time.
        Raises what a removal raised (EngineClosedError once the engine
        closes, StorageFullError).
        """
        now = time.time_ns() if now_ns is None else now_ns
        config = self._state.config
        with self.bookkeeping.sweeping(now, lambda: self._writer.closed):
            result = SweepResult(0, 0, 0)
            age = config.retain_threads_for_seconds
            if age is not None:
                threads, events = self._sweep(
                    schema.THREADS, now - int(age * 1e9), self.remove_thread_if_idle
                )
                result = dataclasses.replace(result, removed_threads=threads, removed_events=events)
            age = config.retain_conversations_for_seconds
            if age is not None:
                keys, _ = self._sweep(
                    schema.CONVERSATIONS, now - int(age * 1e9), self.remove_conversation_if_idle
                )
                result = dataclasses.replace(result, removed_conversations=keys)
        return result

    def _sweep(self, db_name: bytes, cutoff_ns: int, remove: Remove) -> tuple[int, int]:
        """Remove the expired entries of THREADS or CONVERSATIONS; (entries, weight) removed."""
        removed = weight = 0
        after = b""
        while True:
            with self._state.read() as txn:
                candidates, resume = _scan_expired(self._state, txn, db_name, cutoff_ns, after)
            for batch in _batches(candidates):
                batch_removed, batch_weight = self.bookkeeping.remove_batch(
                    db_name == schema.THREADS,
                    [decode_key(key) for key, _ in batch],
                    lambda key: remove(key, cutoff_ns),
                )
                removed += batch_removed
                weight += batch_weight
            if resume is None or self.bookkeeping.stop.is_set():
                return removed, weight
            after = resume


def _scan_expired(
    state: LmdbState, txn: lmdb.Transaction, db_name: bytes, cutoff_ns: int, after: bytes
) -> tuple[list[tuple[bytes, int]], bytes | None]:
    """Expired entries among the next ``RETENTION_SCAN_PAGE`` after ``after``.

    Returns (key, weight) pairs, the weight being a thread's event count (1
    for a conversation key), and the key to resume after, or None at the
    end. Both databases' values end with last_write_unix_nanos.
    """
    threads = db_name == schema.THREADS
    candidates: list[tuple[bytes, int]] = []
    scanned = 0
    with txn.cursor(db=state.dbs[db_name]) as cursor:
        if not (cursor.set_range(after) if after else cursor.first()):
            return candidates, None
        for key, value in pairs(cursor):
            if after and key == after:
                continue
            _, count, _, last_write = schema.QUAD.unpack_from(value)
            if last_write < cutoff_ns:
                # A long conversation key is stored hashed; its value holds it whole.
                candidates.append((key, count) if threads else (schema.full_key(key, value), 1))
            scanned += 1
            if scanned >= RETENTION_SCAN_PAGE:
                return candidates, key
    return candidates, None


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
