"""Reads: a thread's extent, turns, events in commit or turn order, and the steps of a
replay, each a function over one short read transaction the engine opens.

Reads that span several calls take a :class:`ThreadView` first and are bounded
by it: every later read checks the thread's number against the view's, and a
thread cleared since (given a new number) fails with ThreadClearedError.
"""

from __future__ import annotations

import lmdb

from turnstore.server.storage.epochs import to_epoch, to_number
from turnstore.server.storage.errors import ThreadClearedError
from turnstore.server.storage.inputs import MAX_U64, turn_too_large
from turnstore.server.storage.lmdb import schema
from turnstore.server.storage.lmdb.state import LmdbState, get, keys, pairs
from turnstore.server.storage.values import (
    FinishRecord,
    ReadBudget,
    ReplayStep,
    ThreadView,
    TurnChunk,
    TurnCursor,
    replay_opening,
)


def view(state: LmdbState, txn: lmdb.Transaction, thread_id: str, key: bytes) -> ThreadView:
    """A thread's current extent, for a bounded multi-part read (``key``: its encoded id)."""
    value = get(txn, key, state.dbs[schema.THREADS])
    if value is None:
        return ThreadView(thread_id, None, 0)
    record = schema.unpack_thread(value)
    return ThreadView(thread_id, to_epoch(record.number, state.epoch_mask), record.next_position)


def get_turn(
    state: LmdbState, txn: lmdb.Transaction, key: bytes, turn: int, max_bytes: int | None
) -> TurnChunk | None:
    """One whole turn, or None for an unknown thread or turn (meant for an in-place read).

    With ``max_bytes``, a turn whose records total more raises
    InvalidArgumentError before any record is read: the total is kept in the
    turn's entry (``record_bytes``). A turn begun before schema version 2 has
    none and is measured from its records in place (which maps their pages
    but copies nothing).
    """
    value = get(txn, key, state.dbs[schema.THREADS])
    if value is None:
        return None
    number = schema.unpack_thread(value).number
    turn_value = get(txn, schema.PAIR.pack(number, turn), state.dbs[schema.TURNS])
    if turn_value is None:
        return None
    finished, _, _ = schema.unpack_turn(turn_value)
    if max_bytes is not None:
        size = schema.turn_record_bytes(turn_value)
        if size is None:  # begun before schema version 2: measure (maps its pages)
            size = _turn_bytes(state, txn, number, turn)
        if size > max_bytes:
            raise turn_too_large(turn, size, max_bytes)
    events, _ = _turn_records(state, txn, number, turn, -1, MAX_U64, None)
    return TurnChunk(turn, finished, events)


def _turn_bytes(state: LmdbState, txn: lmdb.Transaction, number: int, turn: int) -> int:
    """The total length of one turn's records (in an in-place read: nothing copied)."""
    prefix = schema.PAIR.pack(number, turn)
    events_db = state.dbs[schema.EVENTS]
    total = 0
    with txn.cursor(db=state.dbs[schema.TURN_EVENTS]) as cursor:
        if not cursor.set_range(prefix):
            return 0
        for key in keys(cursor):
            if not key.startswith(prefix):
                break
            position = schema.TRIPLE.unpack(key)[2]
            record = txn.get(schema.PAIR.pack(number, position), db=events_db)
            if record is not None:
                total += len(record)
    return total


def _turn_records(
    state: LmdbState,
    txn: lmdb.Transaction,
    number: int,
    turn: int,
    after_position: int,
    end_position: int,
    budget: ReadBudget | None,
    skip: int = 0,
) -> tuple[list[bytes], int]:
    """Records of one turn after a position and before an end, in append order.

    The first ``skip`` matching events are passed over without being read.
    Returns the records and the position of the last event passed over or
    read (``after_position`` when none).
    """
    prefix = schema.PAIR.pack(number, turn)
    events_db = state.dbs[schema.EVENTS]
    out: list[bytes] = []
    last = after_position
    with txn.cursor(db=state.dbs[schema.TURN_EVENTS]) as cursor:
        if not cursor.set_range(schema.TRIPLE.pack(number, turn, after_position + 1)):
            return out, last
        for key in keys(cursor):
            if not key.startswith(prefix):
                break
            position = schema.TRIPLE.unpack(key)[2]
            if position >= end_position:
                break
            last = position
            if skip:
                skip -= 1
                continue
            record = get(txn, schema.PAIR.pack(number, position), events_db)
            if record is not None:
                out.append(record)
                if budget is not None and budget.spend(record):
                    break
    return out, last


def _check_view(state: LmdbState, txn: lmdb.Transaction, view: ThreadView) -> int | None:
    """The thread number of the view's epoch, or raise if the thread was cleared since."""
    number = to_number(view.epoch, state.epoch_mask)
    if number is None:
        return None
    value = get(txn, view.thread_id.encode("utf-8", "surrogatepass"), state.dbs[schema.THREADS])
    if value is None or schema.unpack_thread(value).number != number:
        raise ThreadClearedError(view.thread_id)
    return number


def read_commit_order(
    state: LmdbState,
    txn: lmdb.Transaction,
    view: ThreadView,
    start_position: int,
    budget: ReadBudget,
) -> list[bytes]:
    """Records from ``start_position`` on, below the view's end, within ``budget``.

    An empty list means the read reached the view's end.
    Raises ThreadClearedError if the thread was cleared after the view.
    """
    number = _check_view(state, txn, view)
    if number is None or start_position >= view.end_position:
        return []
    out: list[bytes] = []
    with txn.cursor(db=state.dbs[schema.EVENTS]) as cursor:
        if not cursor.set_range(schema.PAIR.pack(number, start_position)):
            return out
        for key, value in pairs(cursor):
            got_number, position = schema.PAIR.unpack(key)
            if got_number != number or position >= view.end_position:
                break
            out.append(value)
            if budget.spend(value):
                break
    return out


def turn_cursor_at_offset(
    state: LmdbState, txn: lmdb.Transaction, view: ThreadView, offset: int
) -> TurnCursor | None:
    """The turn-order cursor that skips the first ``offset`` events.

    None when the offset is at or past the end of the thread.
    """
    number = _check_view(state, txn, view)
    if number is None:
        return None
    remaining = offset
    prefix = schema.U64.pack(number)
    with txn.cursor(db=state.dbs[schema.TURNS]) as cursor:
        if not cursor.set_range(prefix):
            return None
        for key, value in pairs(cursor):
            if not key.startswith(prefix):
                break
            turn = schema.PAIR.unpack(key)[1]
            _, count, _ = schema.unpack_turn(value)
            if remaining < count:
                return TurnCursor(turn=turn, skip=remaining)
            remaining -= count
    return None


def read_turn_order(
    state: LmdbState,
    txn: lmdb.Transaction,
    view: ThreadView,
    cursor: TurnCursor,
    budget: ReadBudget,
    include_empty: bool,
) -> tuple[list[TurnChunk], TurnCursor | None]:
    """Turn-ordered records from ``cursor`` on, within ``budget``.

    Returns the chunks read (a turn may be split across calls) and the
    cursor to continue from, or None when the view is exhausted. With
    ``include_empty``, turns without events appear as empty chunks.
    Raises ThreadClearedError if the thread was cleared after the view.
    """
    chunks: list[TurnChunk] = []
    number = _check_view(state, txn, view)
    if number is None:
        return chunks, None
    prefix = schema.U64.pack(number)
    with txn.cursor(db=state.dbs[schema.TURNS]) as turns:
        if not turns.set_range(schema.PAIR.pack(number, cursor.turn)):
            return chunks, None
        for key, value in pairs(turns):
            if not key.startswith(prefix):
                break
            turn = schema.PAIR.unpack(key)[1]
            finished, _, _ = schema.unpack_turn(value)
            resuming = turn == cursor.turn
            after = cursor.after_position if resuming else -1
            events, last = _turn_records(
                state,
                txn,
                number,
                turn,
                after,
                view.end_position,
                budget,
                cursor.skip if resuming else 0,
            )
            fresh = after < 0 and not (resuming and cursor.skip)
            if events or (include_empty and fresh):
                chunks.append(TurnChunk(turn, finished, events))
            if budget.spent:
                return chunks, TurnCursor(turn=turn, after_position=last)
    return chunks, None


def replay_step(
    state: LmdbState,
    txn: lmdb.Transaction,
    thread_id: str,
    key: bytes,
    expected_epoch: int | None,
    start_position: int,
    finish_seq: int | None,
    max_events: int,
    watched_turn: int | None,
    max_bytes: int,
) -> ReplayStep:
    """One step of a replay: the next events and the finishes they pass.

    ``expected_epoch`` is the thread's epoch seen so far (None: none yet); a
    different or missing epoch now means the thread was cleared.
    ``finish_seq`` None starts at the first finish whose frontier is at or
    after ``start_position``. With ``watched_turn``, reports whether that
    turn is finished now. It returns at most ``max_events`` events and stops
    after the one that reaches ``max_bytes``.
    """
    value = get(txn, key, state.dbs[schema.THREADS])
    fields = schema.unpack_thread(value) if value is not None else None
    mask = state.epoch_mask
    thread = (fields[0] ^ mask, fields[1]) if fields is not None else None
    opening = replay_opening(thread_id, expected_epoch, start_position, thread)
    if opening is not None:
        return opening
    assert fields is not None
    number, end_position, finish_count, _ = fields
    # Finishes pending from here, up to the furthest frontier this step could
    # reach; frontiers never decrease along the sequence.
    reach = min(end_position, start_position + max_events)
    pending: list[tuple[int, FinishRecord]] = []
    resume_seq = finish_count
    # The frontier of a finish left over within reach (the step took its most
    # finishes): events stop there, so none passes a finish sent later.
    left_over: int | None = None
    skipping = finish_seq is None
    first_seq = finish_seq or 0
    with txn.cursor(db=state.dbs[schema.TURN_FINISHES]) as cursor:
        if first_seq < finish_count and cursor.set_range(schema.PAIR.pack(number, first_seq)):
            for finish_key, finish_value in pairs(cursor):
                got_number, seq = schema.PAIR.unpack(finish_key)
                if got_number != number:
                    break
                turn, frontier, count, last = schema.QUAD.unpack(finish_value)
                if skipping and frontier < start_position:
                    continue
                skipping = False
                if frontier > reach or len(pending) >= max_events:
                    resume_seq = seq
                    if frontier <= reach:
                        left_over = frontier
                    break
                record = FinishRecord(turn, count, last if count else None, frontier)
                pending.append((seq, record))
    # Events go on past the pending finishes, several turns a step (the
    # replay layer sends one message per frontier: replay.parts); fewer steps
    # cost less (a thread of 100-event turns replayed at 6 µs an event of
    # daemon CPU with a step per turn, 2 µs with 5,000-event turns).
    stop = reach if left_over is None else min(reach, left_over)
    events: list[bytes] = []
    if start_position < stop:
        with txn.cursor(db=state.dbs[schema.EVENTS]) as cursor:
            if cursor.set_range(schema.PAIR.pack(number, start_position)):
                for event_key, event_record in pairs(cursor):
                    got_number, position = schema.PAIR.unpack(event_key)
                    if got_number != number or position >= stop:
                        break
                    events.append(event_record)
                    max_bytes -= len(event_record)
                    if max_bytes <= 0:
                        break
    next_position = start_position + len(events)
    finishes = [record for _, record in pending if record.frontier <= next_position]
    if len(finishes) < len(pending):
        resume_seq = pending[len(finishes)][0]
    watched = False
    if watched_turn is not None:
        turn_value = get(txn, schema.PAIR.pack(number, watched_turn), state.dbs[schema.TURNS])
        watched = turn_value is not None and schema.unpack_turn(turn_value)[0]
    at_end = next_position >= end_position and resume_seq >= finish_count
    return ReplayStep(
        number ^ mask, events, next_position, finishes, resume_seq, at_end, False, watched
    )
