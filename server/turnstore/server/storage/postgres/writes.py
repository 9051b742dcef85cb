"""The PostgreSQL engine's writes, each applied inside the writer's shared transaction.

Each function checks every precondition before it changes anything, so a
write it refuses leaves no trace in the transaction the others commit
(:mod:`turnstore.server.storage.postgres.writer`). The thread's counter row (or the
key's) is locked first, which orders every write of a thread, from any
daemon, in commit order. Appends and finishes, the hot path, are batched
in :mod:`turnstore.server.storage.postgres.appends`.
"""

from __future__ import annotations

from typing import Any

import psycopg

from turnstore.server.storage.batches import (
    BatchOp,
    BatchResult,
    DeleteOp,
    SaveOp,
    at_operation,
    successor,
)
from turnstore.server.storage.errors import (
    EngineError,
    VersionConflictError,
)
from turnstore.server.storage.postgres.tables import THREAD_TABLES

Cursor = psycopg.Cursor[Any]


def delete_thread(cur: Cursor, key: bytes, idle_before_ns: int | None = None) -> int | None:
    """Remove a thread and everything under its number; the events removed.

    None when there is no such thread, or (with ``idle_before_ns``) it was
    written at or after that time.
    """
    cur.execute(
        "SELECT number, next_position, last_write_ns FROM turnstore_threads "
        "WHERE thread_id = %s FOR UPDATE",
        (key,),
    )
    row = cur.fetchone()
    if row is None:
        return None
    number, removed, last_write = int(row[0]), int(row[1]), int(row[2])
    if idle_before_ns is not None and last_write >= idle_before_ns:
        return None
    for table in THREAD_TABLES:
        cur.execute(f"DELETE FROM {table} WHERE number = %s", (number,))
    cur.execute("DELETE FROM turnstore_threads WHERE thread_id = %s", (key,))
    return removed


def save_snapshot(
    cur: Cursor,
    key: bytes,
    data: bytes,
    content_type: str,
    expected_version: int | None,
    kept: int,
    now_ns: int,
) -> int:
    """Store a snapshot as the key's next version; VersionConflictError if not expected.

    The key's row is created only once the save is admitted, so a refused
    save leaves nothing.
    """
    row = _lock_conversation(cur, key)
    current = 0 if row is None else row[2]
    if expected_version is not None and expected_version != current:
        raise VersionConflictError(key.decode("utf-8", "surrogatepass"), expected_version, current)
    if row is None:
        cur.execute(
            "INSERT INTO turnstore_conversations VALUES "
            "(%s, nextval('turnstore_conversation_numbers'), 0, 0, %s) ON CONFLICT DO NOTHING",
            (key, now_ns),
        )
        row = _lock_conversation(cur, key)
        assert row is not None  # inserted, or committed by another writer
        if row[2] != current:  # another daemon saved it first: check again, locked
            return save_snapshot(cur, key, data, content_type, expected_version, kept, now_ns)
    number, latest, current = row
    version = latest + 1
    cur.execute(
        "INSERT INTO turnstore_snapshots VALUES (%s, %s, %s, %s, %s)",
        (number, version, now_ns, content_type, data),
    )
    cur.execute(
        "DELETE FROM turnstore_snapshots WHERE number = %s AND version <= %s",
        (number, version - kept),
    )
    cur.execute(
        "UPDATE turnstore_conversations SET latest_version = %s, current_version = %s, "
        "last_write_ns = %s WHERE key = %s",
        (version, version, now_ns, key),
    )
    return version


def _lock_conversation(cur: Cursor, key: bytes) -> tuple[int, int, int] | None:
    """Lock a key's row; (number, latest_version, current_version) or None."""
    cur.execute(
        "SELECT number, latest_version, current_version FROM turnstore_conversations "
        "WHERE key = %s FOR UPDATE",
        (key,),
    )
    row = cur.fetchone()
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]))


def delete_snapshots(
    cur: Cursor, key: bytes, now_ns: int, expected_version: int | None = None
) -> int:
    """Delete every kept version of a key, keeping its version counter; how many.

    VersionConflictError unless ``expected_version`` (when given) is the
    current version, 0 for none.
    """
    cur.execute(
        "SELECT number, current_version FROM turnstore_conversations WHERE key = %s FOR UPDATE",
        (key,),
    )
    row = cur.fetchone()
    current = 0 if row is None else int(row[1])
    if expected_version is not None and expected_version != current:
        raise VersionConflictError(key.decode("utf-8", "surrogatepass"), expected_version, current)
    if row is None:
        return 0
    cur.execute("DELETE FROM turnstore_snapshots WHERE number = %s", (row[0],))
    removed = cur.rowcount
    cur.execute(
        "UPDATE turnstore_conversations SET current_version = 0, last_write_ns = %s WHERE key = %s",
        (now_ns, key),
    )
    return removed


def delete_conversation(cur: Cursor, key: bytes, idle_before_ns: int) -> int | None:
    """Remove a key idle since before ``idle_before_ns`` with its counter; versions removed."""
    cur.execute(
        "SELECT number, last_write_ns FROM turnstore_conversations WHERE key = %s FOR UPDATE",
        (key,),
    )
    row = cur.fetchone()
    if row is None or int(row[1]) >= idle_before_ns:
        return None
    cur.execute("DELETE FROM turnstore_snapshots WHERE number = %s", (row[0],))
    removed = cur.rowcount
    cur.execute("DELETE FROM turnstore_conversations WHERE key = %s", (key,))
    return removed


def delete_under(cur: Cursor, prefix: bytes, now_ns: int) -> tuple[int, int]:
    """Delete every key under ``prefix`` that holds a snapshot, keeping their counters;
    (versions removed, keys deleted). Locks the keys' rows in key order."""
    above = successor(prefix)
    cur.execute(
        "SELECT key, number FROM turnstore_conversations WHERE current_version <> 0 "
        "AND key >= %s" + (" AND key < %s" if above is not None else "") + " ORDER BY key "
        "FOR UPDATE",
        (prefix, above) if above is not None else (prefix,),
    )
    rows = [(bytes(row[0]), int(row[1])) for row in cur.fetchall()]
    if not rows:
        return 0, 0
    numbers = [number for _, number in rows]
    cur.execute("DELETE FROM turnstore_snapshots WHERE number = ANY(%s)", (numbers,))
    removed = cur.rowcount
    cur.execute(
        "UPDATE turnstore_conversations SET current_version = 0, last_write_ns = %s "
        "WHERE key = ANY(%s)",
        (now_ns, [key for key, _ in rows]),
    )
    return removed, len(rows)


def apply_batch(
    cur: Cursor, operations: list[tuple[BatchOp, bytes, bytes]], kept: int, now_ns: int
) -> list[BatchResult]:
    """Apply a batch's checked operations in order, all or nothing: under a savepoint of
    the writer's transaction, rolled back when one is refused, so the writes sharing the
    transaction commit without any of the batch."""
    cur.execute("SAVEPOINT turnstore_batch")
    try:
        results: list[BatchResult] = []
        for index, (operation, encoded, _) in enumerate(operations):
            try:
                if isinstance(operation, SaveOp):
                    version = save_snapshot(
                        cur,
                        encoded,
                        operation.data,
                        operation.content_type,
                        operation.expected_version,
                        kept,
                        now_ns,
                    )
                    results.append(BatchResult(version=version))
                elif isinstance(operation, DeleteOp):
                    cur.execute(
                        "SELECT current_version FROM turnstore_conversations WHERE key = %s",
                        (encoded,),
                    )
                    row = cur.fetchone()
                    live = row is not None and int(row[0]) != 0
                    removed = delete_snapshots(cur, encoded, now_ns, operation.expected_version)
                    results.append(BatchResult(removed_versions=removed, removed_keys=int(live)))
                else:
                    removed, count = delete_under(cur, encoded, now_ns)
                    results.append(BatchResult(removed_versions=removed, removed_keys=count))
            except VersionConflictError as error:
                cur.execute("ROLLBACK TO SAVEPOINT turnstore_batch")
                # The version the key is at with nothing of the batch applied.
                cur.execute(
                    "SELECT current_version FROM turnstore_conversations WHERE key = %s",
                    (encoded,),
                )
                row = cur.fetchone()
                current = 0 if row is None else int(row[0])
                raise at_operation(index, error.at_version(current)) from None
            except EngineError as error:
                raise at_operation(index, error) from None
    except VersionConflictError:
        raise
    except EngineError:
        cur.execute("ROLLBACK TO SAVEPOINT turnstore_batch")
        raise
    cur.execute("RELEASE SAVEPOINT turnstore_batch")
    return results
