"""The PostgreSQL engine's snapshot reads, listings and statistics (one cursor each).

Called by :class:`turnstore.server.pg_engine.engine.PostgresEngine` inside one
read-only transaction; the answers are the LMDB engine's, in the same orders.
"""

from __future__ import annotations

from turnstore.server.pg_engine.writes import Cursor
from turnstore.server.values import (
    KeySummary,
    SpaceUsage,
    StorageStats,
    StoredSnapshot,
    ThreadSummary,
)

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
    )
    row = cur.fetchone()
    if row is None:
        return None
    return StoredSnapshot(int(row[0]), str(row[1]), bytes(row[2]), int(row[3]))


def list_snapshot_versions(cur: Cursor, key: bytes) -> list[StoredSnapshot]:
    """The kept versions of a key, newest first; empty for an unknown or deleted key."""
    cur.execute(
        "SELECT s.version, s.content_type, s.data, s.saved_at_ns "
        "FROM turnstore_conversations c JOIN turnstore_snapshots s "
        "ON s.number = c.number WHERE c.key = %s ORDER BY s.version DESC",
        (key,),
    )
    return [StoredSnapshot(int(r[0]), str(r[1]), bytes(r[2]), int(r[3])) for r in cur.fetchall()]


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


def list_keys(cur: Cursor, start_after: str, limit: int) -> list[KeySummary]:
    """Up to ``limit`` keys holding a snapshot after ``start_after``, in byte order."""
    cur.execute(
        "SELECT key, current_version, last_write_ns FROM turnstore_conversations "
        "WHERE key > %s AND current_version <> 0 ORDER BY key LIMIT %s",
        (start_after.encode("utf-8", "surrogatepass"), limit),
    )
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
