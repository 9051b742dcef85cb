"""The PostgreSQL engine's snapshot reads, listings and statistics (one cursor each).

Called by :class:`turnstore.server.storage.postgres.engine.PostgresEngine` inside one
read-only transaction; the answers are the LMDB engine's, in the same orders.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from turnstore.server.storage.batches import KeyRange
from turnstore.server.storage.postgres.writes import Cursor
from turnstore.server.storage.values import (
    KeySummary,
    SnapshotVersion,
    SpaceUsage,
    StorageStats,
    StoredSnapshot,
    ThreadSummary,
)

# Index entries a filtered recent listing reads per query.
RECENT_PAGE: Final = 1000

_TABLES = (
    "turnstore_threads",
    "turnstore_turns",
    "turnstore_events",
    "turnstore_finishes",
    "turnstore_conversations",
    "turnstore_snapshots",
)


def load_snapshot(cur: Cursor, key: bytes, version: int | None) -> StoredSnapshot | None:
    """The current (or the kept ``version``) snapshot of a key; None when none."""
    cur.execute(
        "SELECT s.version, s.content_type, s.data, s.saved_at_ns "
        "FROM turnstore_conversations c JOIN turnstore_snapshots s "
        "ON s.number = c.number WHERE c.key = %s AND c.current_version <> 0 "
        "AND s.version = " + ("c.current_version" if version is None else "%s"),
        (key,) if version is None else (key, version),
        binary=True,
    )
    row = cur.fetchone()
    if row is None:
        return None
    return StoredSnapshot(int(row[0]), str(row[1]), bytes(row[2]), int(row[3]))


def list_snapshot_versions(cur: Cursor, key: bytes) -> list[SnapshotVersion]:
    """The kept versions of a key, newest first; empty for an unknown or deleted key.

    Sizes come from ``octet_length``, which reads a TOASTed value's stored
    length, not the value: listing never loads the versions' data.
    """
    cur.execute(
        "SELECT s.version, s.content_type, octet_length(s.data), s.saved_at_ns "
        "FROM turnstore_conversations c JOIN turnstore_snapshots s "
        "ON s.number = c.number WHERE c.key = %s ORDER BY s.version DESC",
        (key,),
    )
    return [SnapshotVersion(int(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in cur.fetchall()]


def list_recent_threads(
    cur: Cursor, limit: int, keep: Callable[[str], bool] | None
) -> list[ThreadSummary]:
    """Up to ``limit`` threads, most recently written first, read along the last-write index.

    Pages of the index are fetched until ``limit`` threads pass ``keep``, so
    a listing reads about what it returns.
    """
    out: list[ThreadSummary] = []
    bound: tuple[int, bytes] | None = None
    page = limit if keep is None else max(limit, RECENT_PAGE)
    while len(out) < limit:
        if bound is None:
            cur.execute(
                "SELECT thread_id, next_position, next_finish_seq, last_write_ns "
                "FROM turnstore_threads ORDER BY last_write_ns DESC, thread_id DESC LIMIT %s",
                (page,),
            )
        else:
            cur.execute(
                "SELECT thread_id, next_position, next_finish_seq, last_write_ns "
                "FROM turnstore_threads WHERE (last_write_ns, thread_id) < (%s, %s) "
                "ORDER BY last_write_ns DESC, thread_id DESC LIMIT %s",
                (bound[0], bound[1], page),
            )
        rows = cur.fetchall()
        for row in rows:
            thread_id = bytes(row[0]).decode("utf-8", "surrogatepass")
            if keep is None or keep(thread_id):
                out.append(ThreadSummary(thread_id, int(row[1]), int(row[2]), int(row[3])))
                if len(out) >= limit:
                    break
        if len(rows) < page:
            break
        bound = (int(rows[-1][3]), bytes(rows[-1][0]))
    return out


def list_threads(cur: Cursor, start_after: str, limit: int) -> list[ThreadSummary]:
    """Up to ``limit`` threads after ``start_after``, in byte order of their UTF-8 ids."""
    cur.execute(
        "SELECT thread_id, next_position, next_finish_seq, last_write_ns "
        "FROM turnstore_threads WHERE thread_id > %s ORDER BY thread_id LIMIT %s",
        (start_after.encode("utf-8", "surrogatepass"), limit),
    )
    return [
        ThreadSummary(bytes(r[0]).decode("utf-8", "surrogatepass"), int(r[1]), int(r[2]), int(r[3]))
        for r in cur.fetchall()
    ]


def list_keys_query(key_range: KeyRange, limit: int) -> tuple[str, tuple[object, ...]]:
    """The statement (and its parameters) listing ``key_range``: an index range scan of
    the partial index ``turnstore_conversations_live`` (live keys only), in the listing's
    direction, stopping at ``limit`` rows."""
    low, low_inclusive, high = key_range.bounds()
    where = ["current_version <> 0", "key >= %s" if low_inclusive else "key > %s"]
    params: list[object] = [low]
    if high is not None:
        where.append("key < %s")
        params.append(high)
    order = "DESC" if key_range.newest_first else "ASC"
    params.append(limit)
    return (
        "SELECT key, current_version, last_write_ns FROM turnstore_conversations "
        f"WHERE {' AND '.join(where)} ORDER BY key {order} LIMIT %s",
        tuple(params),
    )


def list_keys(cur: Cursor, key_range: KeyRange, limit: int) -> list[KeySummary]:
    """Up to ``limit`` keys holding a snapshot in ``key_range``, in byte order (descending
    when ``newest_first``)."""
    cur.execute(*list_keys_query(key_range, limit))
    return [
        KeySummary(bytes(r[0]).decode("utf-8", "surrogatepass"), int(r[1]), int(r[2]))
        for r in cur.fetchall()
    ]


def storage_stats(cur: Cursor) -> StorageStats:
    """Counts of everything stored, and the bytes of turnstore's tables (indexes included)."""
    cur.execute(
        "SELECT (SELECT count(*) FROM turnstore_threads), "
        "(SELECT count(*) FROM turnstore_events), (SELECT count(*) FROM turnstore_turns), "
        "(SELECT count(*) FROM turnstore_finishes), "
        "(SELECT count(*) FROM turnstore_conversations WHERE current_version <> 0), "
        "(SELECT count(*) FROM turnstore_snapshots), "
        + " + ".join(f"pg_total_relation_size('{name}')" for name in _TABLES)
    )
    row = cur.fetchone()
    assert row is not None
    threads, events, turns, finished, conversations, versions, size = (int(v) for v in row)
    return StorageStats(
        threads, events, turns, finished, conversations, versions, size, SpaceUsage(size, 0, 0)
    )
