"""The PostgreSQL engine's writes, each applied inside the writer's shared transaction.

Each function checks every precondition before it changes anything, so a
write it refuses leaves no trace in the transaction the others commit
(:mod:`turnstore.server.pg_engine.writer`). The thread's counter row (or the
key's) is locked first, which orders every write of a thread, from any
daemon, in commit order.
"""

from __future__ import annotations

from typing import Any

import psycopg

from turnstore.server import records
from turnstore.server.errors import (
    EventIdConflictError,
    TurnAlreadyFinishedError,
    TurnFinishedError,
    VersionConflictError,
)
from turnstore.server.pg_engine.tables import THREAD_TABLES, from_column, to_column

Cursor = psycopg.Cursor[Any]


def _lock_thread(cur: Cursor, key: bytes) -> tuple[int, int, int] | None:
    """Lock a thread's counter row; (number, next_position, next_finish_seq) or None."""
    cur.execute(
        "SELECT number, next_position, next_finish_seq FROM turnstore_threads "
        "WHERE thread_id = %s FOR UPDATE",
        (key,),
    )
    row = cur.fetchone()
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]))


def _create_thread(cur: Cursor, key: bytes, now_ns: int) -> tuple[int, int, int]:
    """Create a thread's row (or, when another daemon just did, lock that one)."""
    cur.execute(
        "INSERT INTO turnstore_threads VALUES "
        "(%s, nextval('turnstore_thread_numbers'), 0, 0, %s) ON CONFLICT DO NOTHING",
        (key, now_ns),
    )
    locked = _lock_thread(cur, key)
    assert locked is not None  # inserted, or committed by another writer
    return locked


def write_turn(
    cur: Cursor,
    key: bytes,
    turn: int,
    events: list[tuple[bytes, bytes]],
    finish: bool,
    now_ns: int,
) -> tuple[list[int], int]:
    """Append ``events`` (id, envelope) to a turn, then finish it if asked.

    The same rules as the LMDB engine's ``_write_turn``: returns each
    event's position and the turn's event count; an id already stored in
    this turn keeps its position (a retry), one stored in another turn is
    EventIdConflictError; a finished turn takes no new event
    (TurnFinishedError) and no second finish (TurnAlreadyFinishedError).
    """
    # The lock, the turn and the stored ids in one round trip: the id query
    # runs after the lock is taken, so it sees every earlier commit.
    ids_cur = cur.connection.cursor()
    with cur.connection.pipeline():
        cur.execute(
            "SELECT t.number, t.next_position, t.next_finish_seq, u.finished, u.event_count, "
            "u.last_position FROM turnstore_threads t LEFT JOIN turnstore_turns u "
            "ON u.number = t.number AND u.turn = %s WHERE t.thread_id = %s FOR UPDATE OF t",
            (to_column(turn), key),
        )
        if events:
            ids_cur.execute(
                "SELECT e.event_id, e.position, e.turn FROM turnstore_events e "
                "JOIN turnstore_threads t ON e.number = t.number "
                "WHERE t.thread_id = %s AND e.event_id = ANY(%s)",
                (key, [event_id for event_id, _ in events]),
            )
    row = cur.fetchone()
    locked = row is not None
    number, next_position, next_finish = (
        (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)
    )
    turn_row = row[3:] if row is not None and row[3] is not None else None
    stored: dict[bytes, tuple[int, int]] = {}
    if events:
        for event_id, position, stored_turn in ids_cur.fetchall():
            stored[bytes(event_id)] = (int(position), from_column(int(stored_turn)))
    ids_cur.close()
    positions: list[int] = []
    new: list[tuple[bytes, bytes, int]] = []
    batch_ids: dict[bytes, int] = {}
    for event_id, envelope in events:
        known = batch_ids.get(event_id)
        if known is None and event_id in stored:
            known, stored_turn = stored[event_id]
            if stored_turn != turn:
                raise EventIdConflictError(event_id.decode(), stored_turn, known)
        if known is None:
            known = next_position + len(new)
            batch_ids[event_id] = known
            new.append((event_id, envelope, known))
        positions.append(known)
    count, last = 0, 0
    if turn_row is not None:
        finished, count, last = bool(turn_row[0]), int(turn_row[1]), int(turn_row[2])
        if finished:
            if new:
                raise TurnFinishedError(turn)
            if finish and not events:
                raise TurnAlreadyFinishedError(turn)
            return positions, count  # a retry of events stored before the finish
    if not new and not finish:
        return positions, count  # a retry: every event is already stored
    if not locked:
        number, next_position, next_finish = _create_thread(cur, key, now_ns)
        if next_position or next_finish:  # another daemon created it first: again, locked
            return write_turn(cur, key, turn, events, finish, now_ns)
    # The rest needs no answers: one round trip for all of it.
    with cur.connection.pipeline():
        if new:
            first = new[0][2]
            values = records.encode_batch(first, turn, now_ns, [item[1] for item in new])
            column = to_column(turn)
            cur.executemany(
                "INSERT INTO turnstore_events VALUES (%s, %s, %s, %s, %s)",
                [
                    (number, item[2], column, item[0], value)
                    for item, value in zip(new, values, strict=True)
                ],
            )
            count, last, next_position = count + len(new), new[-1][2], new[-1][2] + 1
        if finish:
            cur.execute(
                "INSERT INTO turnstore_finishes VALUES (%s, %s, %s, %s, %s, %s)",
                (number, next_finish, to_column(turn), next_position, count, last),
            )
            next_finish += 1
        cur.execute(
            "INSERT INTO turnstore_turns VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (number, turn) DO UPDATE SET finished = EXCLUDED.finished, "
            "event_count = EXCLUDED.event_count, last_position = EXCLUDED.last_position",
            (number, to_column(turn), finish, count, last),
        )
        cur.execute(
            "UPDATE turnstore_threads SET next_position = %s, next_finish_seq = %s, "
            "last_write_ns = %s WHERE thread_id = %s",
            (next_position, next_finish, now_ns, key),
        )
    return positions, count


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


def delete_snapshots(cur: Cursor, key: bytes, now_ns: int) -> int:
    """Delete every kept version of a key, keeping its version counter; how many."""
    cur.execute("SELECT number FROM turnstore_conversations WHERE key = %s FOR UPDATE", (key,))
    row = cur.fetchone()
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
