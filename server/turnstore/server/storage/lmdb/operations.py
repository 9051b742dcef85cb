"""Operations' reads: listing threads and keys, statistics and space, each a function over
one read transaction the engine opens (docs/operations.md).

A listing in several calls is several transactions, so it sees threads
created or removed in between, or not. Backups are :mod:`.backups`.
"""

from __future__ import annotations

from collections.abc import Callable

import lmdb

from turnstore.server.storage.batches import KeyRange
from turnstore.server.storage.config import LMDB_MAX_KEY_BYTES
from turnstore.server.storage.lmdb import live_keys, schema
from turnstore.server.storage.lmdb.state import LmdbState, as_bytes, decode_key, pairs
from turnstore.server.storage.values import KeySummary, StorageStats, ThreadSummary


def _page(
    state: LmdbState,
    txn: lmdb.Transaction,
    db_name: bytes,
    start_after: str,
    limit: int,
    keep: Callable[[bytes], bool] | None = None,
) -> list[tuple[bytes, bytes]]:
    """Up to ``limit`` entries of a database after a key, in key order."""
    after = start_after.encode("utf-8", "surrogatepass")
    out: list[tuple[bytes, bytes]] = []
    with txn.cursor(db=state.dbs[db_name]) as cursor:
        # A key longer than LMDB allows sorts after its truncation.
        found = cursor.set_range(after[:LMDB_MAX_KEY_BYTES]) if after else cursor.first()
        if not found:
            return out
        for key, value in pairs(cursor):
            if after and key <= after:
                continue
            if keep is None or keep(value):
                out.append((key, value))
                if len(out) >= limit:
                    break
    return out


def _summary(thread_id: str, value: bytes) -> ThreadSummary:
    record = schema.unpack_thread(value)
    return ThreadSummary(
        thread_id, record.next_position, record.next_finish_seq, record.last_write_ns
    )


def list_threads(
    state: LmdbState, txn: lmdb.Transaction, start_after: str, limit: int
) -> list[ThreadSummary]:
    """Up to ``limit`` threads after ``start_after`` ("": from the first), in the byte
    order of their UTF-8 ids."""
    return [
        _summary(decode_key(key), value)
        for key, value in _page(state, txn, schema.THREADS, start_after, limit)
    ]


def list_recent_threads(
    state: LmdbState, txn: lmdb.Transaction, limit: int, keep: Callable[[str], bool] | None
) -> list[ThreadSummary]:
    """Up to ``limit`` threads, most recently written first (ties: higher id first).

    Walks ``threads_by_write`` backwards, so it reads the entries it returns
    (and those ``keep`` refuses), never the whole thread table.
    """
    out: list[ThreadSummary] = []
    threads = state.dbs[schema.THREADS]
    with txn.cursor(db=state.dbs[schema.THREADS_BY_WRITE]) as cursor:
        if not cursor.last():
            return out
        for raw_key in cursor.iterprev(keys=True, values=False):
            thread_key = as_bytes(raw_key)[schema.U64.size :]
            thread_id = decode_key(thread_key)
            if keep is not None and not keep(thread_id):
                continue
            value = txn.get(thread_key, db=threads)
            if value is None:  # never: the writer keeps both in step
                continue
            out.append(_summary(thread_id, as_bytes(value)))
            if len(out) >= limit:
                break
    return out


def list_keys(
    state: LmdbState, txn: lmdb.Transaction, key_range: KeyRange, limit: int
) -> list[KeySummary]:
    """Up to ``limit`` conversation keys holding a snapshot in ``key_range``, in the byte
    order of their UTF-8 form (descending when the range is ``newest_first``)."""
    return list_keys_counted(state, txn, key_range, limit)[0]


def list_keys_counted(
    state: LmdbState, txn: lmdb.Transaction, key_range: KeyRange, limit: int
) -> tuple[list[KeySummary], int]:
    """:func:`list_keys`, and how many index entries it read to answer.

    Walks ``live_conversations`` between the range's bounds (deleted keys are
    not in it) and reads each listed key's ``conversations`` record, so the
    entries read are the keys returned, plus at most one past each bound.
    """
    low, low_inclusive, high = key_range.bounds()
    conversations = state.dbs[schema.CONVERSATIONS]
    out: list[KeySummary] = []
    examined = 0
    newest_first = key_range.newest_first
    for key in live_keys.walk_from(state, txn, high if newest_first else low, newest_first):
        examined += 1
        if newest_first:
            if high is not None and key >= high:
                continue
            if key < low or (key == low and not low_inclusive):
                break
        else:
            if key < low or (key == low and not low_inclusive):
                continue
            if high is not None and key >= high:
                break
        value = txn.get(schema.record_key(key), db=conversations)
        if value is None:  # never: the writer keeps both in step
            continue
        record = schema.unpack_conversation(as_bytes(value))
        out.append(KeySummary(decode_key(key), record.current_version, record.last_write_ns))
        if len(out) >= limit:
            break
    return out, examined


def storage_stats(state: LmdbState, txn: lmdb.Transaction) -> StorageStats:
    """What the database holds, counted in one read transaction.

    Entry counts come from LMDB's own statistics (constant time);
    ``conversations`` counts ``live_conversations`` (deleted keys stay in
    ``conversations`` for their version counters but hold no snapshot).
    ``data_file_bytes`` is left 0 for the caller to fill in outside the
    transaction.
    """

    def entries(name: bytes) -> int:
        return int(txn.stat(state.dbs[name])["entries"])

    conversations = entries(schema.LIVE_CONVERSATIONS)
    return StorageStats(
        threads=entries(schema.THREADS),
        events=entries(schema.EVENTS),
        turns=entries(schema.TURNS),
        finished_turns=entries(schema.TURN_FINISHES),
        conversations=conversations,
        snapshot_versions=entries(schema.SNAPSHOTS),
        data_file_bytes=0,
        space=state.space.usage(txn),
    )
