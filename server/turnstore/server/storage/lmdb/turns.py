"""Turn writes: appends (idempotent by event id), the finish barrier, and clearing a thread.

Functions applied by the writer (:mod:`.writer`) inside its shared write
transaction. Each checks everything (the space for what it adds included)
before writing anything, so a write it refuses leaves the transaction as it
found it.
"""

from __future__ import annotations

from typing import Any

import lmdb

from turnstore.server.storage import records
from turnstore.server.storage.errors import (
    EventIdConflictError,
    NextPositionConflictError,
    TurnAlreadyFinishedError,
    TurnFinishedError,
)
from turnstore.server.storage.lmdb import schema
from turnstore.server.storage.lmdb.space import estimate_events_bytes
from turnstore.server.storage.lmdb.state import LmdbState, delete_prefix, get, next_number


def write_turn(
    state: LmdbState,
    txn: lmdb.Transaction,
    key: bytes,
    turn: int,
    events: list[tuple[bytes, bytes]],
    finish: bool,
    now_ns: int,
    expected_next_position: int | None = None,
) -> tuple[list[int], int]:
    """Append ``events`` (id, envelope) to a turn, then finish it if asked.

    Returns each event's position and the turn's event count. An event
    whose id is already stored in this turn is not stored again: its
    original position is returned. With ``expected_next_position``, a
    write that would store anything happens only if the thread's next
    position is that (0: no thread), else NextPositionConflictError; a
    retry of stored events returns their positions without that check.
    Checks everything, the space for what it adds included, before
    writing anything.
    """
    value = get(txn, key, state.dbs[schema.THREADS])
    if value is not None:
        number, next_position, next_finish, _ = schema.unpack_thread(value)
    else:
        number = next_position = next_finish = 0  # numbered once admitted, below
    ids_db = state.dbs[schema.EVENT_IDS]
    prefix = schema.U64.pack(number)
    stored_ids: dict[Any, Any] = {}
    if value is not None:
        with txn.cursor(db=ids_db) as cursor:
            stored_ids = dict(cursor.getmulti([prefix + event_id for event_id, _ in events]))
    positions: list[int] = []
    new: list[tuple[bytes, bytes, int]] = []
    batch_ids: dict[bytes, int] = {}
    for event_id, envelope in events:
        known = batch_ids.get(event_id)
        if known is None and stored_ids:
            stored = stored_ids.get(prefix + event_id)
            if stored is not None:
                known, stored_turn = schema.PAIR.unpack(stored)
                if stored_turn != turn:
                    raise EventIdConflictError(event_id.decode(), stored_turn, known)
        if known is None:
            known = next_position + len(new)
            batch_ids[event_id] = known
            new.append((event_id, envelope, known))
        positions.append(known)
    turn_key = schema.PAIR.pack(number, turn)
    turn_value = get(txn, turn_key, state.dbs[schema.TURNS]) if value is not None else None
    count, last = 0, 0
    record_bytes: int | None = 0
    if turn_value is not None:
        finished, count, last = schema.unpack_turn(turn_value)
        record_bytes = schema.turn_record_bytes(turn_value)
        if finished:
            if new:
                raise TurnFinishedError(turn)
            if finish and not events:
                raise TurnAlreadyFinishedError(turn)
            return positions, count  # a retry of events stored before the finish
    if not new and not finish:
        return positions, count  # a retry: every event is already stored
    if expected_next_position is not None and expected_next_position != next_position:
        thread_id = key.decode("utf-8", "surrogatepass")
        raise NextPositionConflictError(thread_id, expected_next_position, next_position)
    added = sum(len(item[0]) + len(item[1]) for item in new)
    estimate = estimate_events_bytes(len(new), added, state.limits.max_event_id_bytes)
    state.space.admit(txn, estimate + 2 * len(key) + 256)
    if value is None:
        number = next_number(state, txn, schema.META_NEXT_THREAD_NUMBER)
        prefix = schema.U64.pack(number)
        turn_key = schema.PAIR.pack(number, turn)
    if new:
        first = new[0][2]
        values = records.encode_batch(first, turn, now_ns, [item[1] for item in new])
        pair, triple = schema.PAIR.pack, schema.TRIPLE.pack
        with txn.cursor(db=state.dbs[schema.EVENTS]) as cursor:
            cursor.putmulti(
                zip([pair(number, first + n) for n in range(len(new))], values, strict=True)
            )
        with txn.cursor(db=state.dbs[schema.TURN_EVENTS]) as cursor:
            cursor.putmulti([(triple(number, turn, first + n), b"") for n in range(len(new))])
        with txn.cursor(db=ids_db) as cursor:
            cursor.putmulti([(prefix + item[0], pair(item[2], turn)) for item in new])
        count, last, next_position = count + len(new), new[-1][2], new[-1][2] + 1
        if record_bytes is not None:
            record_bytes += sum(map(len, values))
    if finish:
        finish_value = schema.QUAD.pack(turn, next_position, count, last)
        txn.put(
            schema.PAIR.pack(number, next_finish),
            finish_value,
            db=state.dbs[schema.TURN_FINISHES],
        )
        next_finish += 1
    txn.put(
        turn_key,
        schema.pack_turn(finish, count, last, record_bytes),
        db=state.dbs[schema.TURNS],
    )
    txn.put(
        key,
        schema.pack_thread(number, next_position, next_finish, now_ns),
        db=state.dbs[schema.THREADS],
    )
    by_write = state.dbs[schema.THREADS_BY_WRITE]
    if value is not None:
        txn.delete(schema.by_write_key(schema.unpack_thread(value).last_write_ns, key), db=by_write)
    txn.put(schema.by_write_key(now_ns, key), b"", db=by_write)
    return positions, count


def clear_thread(state: LmdbState, txn: lmdb.Transaction, key: bytes) -> int:
    """Remove a thread entirely (a write that frees); the number of events removed.

    0 for an unknown thread. The thread's next write starts it afresh:
    positions from 0, every turn number free.
    """
    value = get(txn, key, state.dbs[schema.THREADS])
    if value is None:
        return 0
    record = schema.unpack_thread(value)
    delete_thread(state, txn, key, record.number)
    return record.next_position


def delete_thread(state: LmdbState, txn: lmdb.Transaction, key: bytes, number: int) -> None:
    """Delete a thread's entry and everything stored under its number."""
    prefix = schema.U64.pack(number)
    for name in (
        schema.EVENTS,
        schema.TURN_EVENTS,
        schema.TURNS,
        schema.TURN_FINISHES,
        schema.EVENT_IDS,
    ):
        delete_prefix(txn, state.dbs[name], prefix)
    value = get(txn, key, state.dbs[schema.THREADS])
    if value is not None:
        last_write_ns = schema.unpack_thread(value).last_write_ns
        txn.delete(schema.by_write_key(last_write_ns, key), db=state.dbs[schema.THREADS_BY_WRITE])
    txn.delete(key, db=state.dbs[schema.THREADS])
    state.space.note_freed()
