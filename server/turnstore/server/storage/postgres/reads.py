"""The PostgreSQL engine's reads, each in one read-only REPEATABLE READ transaction.

The same answers as the LMDB engine's reads (:mod:`turnstore.server.storage.lmdb.reads`):
each read sees one snapshot of the database, a read bounded by a
:class:`ThreadView` of a thread since cleared fails with ThreadClearedError,
and records come back as the stored wire bytes. The replay step is
:mod:`.replay_reads`'s.
"""

from __future__ import annotations

from turnstore.server.storage.epochs import to_number
from turnstore.server.storage.errors import ThreadClearedError
from turnstore.server.storage.inputs import turn_too_large
from turnstore.server.storage.postgres.tables import from_column, to_column
from turnstore.server.storage.postgres.writes import Cursor
from turnstore.server.storage.values import (
    ReadBudget,
    ThreadView,
    TurnChunk,
    TurnCursor,
)

# Rows fetched per query by reads walking a budget.
_PAGE = 512


def thread_row(cur: Cursor, key: bytes) -> tuple[int, int, int] | None:
    """(number, next_position, next_finish_seq) of a thread, or None."""
    cur.execute(
        "SELECT number, next_position, next_finish_seq FROM turnstore_threads WHERE thread_id = %s",
        (key,),
    )
    row = cur.fetchone()
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]))


def check_view(cur: Cursor, view: ThreadView, mask: int) -> int | None:
    """The thread number of the view's epoch (``mask``: the database's epoch mask),
    or ThreadClearedError if the thread was cleared since."""
    number = to_number(view.epoch, mask)
    if number is None:
        return None
    row = thread_row(cur, view.thread_id.encode("utf-8", "surrogatepass"))
    if row is None or row[0] != number:
        raise ThreadClearedError(view.thread_id)
    return number


def get_turn(cur: Cursor, key: bytes, turn: int, max_bytes: int | None) -> TurnChunk | None:
    row = thread_row(cur, key)
    if row is None:
        return None
    cur.execute(
        "SELECT finished, event_count, last_position FROM turnstore_turns "
        "WHERE number = %s AND turn = %s",
        (row[0], to_column(turn)),
    )
    found = cur.fetchone()
    if found is None:
        return None
    if not found[1]:
        return TurnChunk(turn, bool(found[0]), [])
    if max_bytes is not None:
        # octet_length reads a TOASTed record's stored length, not the record.
        cur.execute(
            "SELECT coalesce(sum(octet_length(record)), 0) FROM turnstore_events "
            "WHERE number = %s AND turn = %s AND position <= %s",
            (row[0], to_column(turn), found[2]),
        )
        size_row = cur.fetchone()
        size = int(size_row[0]) if size_row is not None else 0
        if size > max_bytes:
            raise turn_too_large(turn, size, max_bytes)
    # Bounded by the turn's last position and ordered as the turns index, so
    # that no plan walks the thread's later events.
    cur.execute(
        "SELECT record FROM turnstore_events WHERE number = %s AND turn = %s "
        "AND position <= %s ORDER BY turn, position",
        (row[0], to_column(turn), found[2]),
        binary=True,
    )
    return TurnChunk(turn, bool(found[0]), [bytes(r[0]) for r in cur.fetchall()])


def read_commit_order(
    cur: Cursor, view: ThreadView, start_position: int, budget: ReadBudget, *, mask: int
) -> list[bytes]:
    """Records from ``start_position`` within ``budget``: sizes first, then what it takes."""
    number = check_view(cur, view, mask)
    out: list[bytes] = []
    position = start_position
    while number is not None and position < view.end_position and not budget.spent:
        cur.execute(
            "SELECT octet_length(record) FROM turnstore_events WHERE number = %s "
            "AND position >= %s AND position < %s ORDER BY position LIMIT %s",
            (number, position, view.end_position, min(budget.events_left, _PAGE)),
        )
        sizes = [int(row[0]) for row in cur.fetchall()]
        if not sizes:
            break
        taken, room = 0, budget.bytes_left
        for size in sizes:
            taken += 1
            room -= size
            if room <= 0:
                break
        cur.execute(
            "SELECT record FROM turnstore_events WHERE number = %s "
            "AND position >= %s AND position < %s ORDER BY position",
            (number, position, position + taken),
            binary=True,
        )
        for (record,) in cur.fetchall():
            out.append(bytes(record))
            position += 1
            if budget.spend(out[-1]):
                return out
    return out


def turn_cursor_at_offset(
    cur: Cursor, view: ThreadView, offset: int, *, mask: int
) -> TurnCursor | None:
    number = check_view(cur, view, mask)
    if number is None:
        return None
    cur.execute(
        "SELECT turn, running - event_count FROM (SELECT turn, event_count, "
        "sum(event_count) OVER (ORDER BY turn) AS running FROM turnstore_turns "
        "WHERE number = %s) AS t WHERE running > %s ORDER BY turn LIMIT 1",
        (number, offset),
    )
    row = cur.fetchone()
    if row is None:
        return None
    return TurnCursor(turn=from_column(int(row[0])), skip=offset - int(row[1]))


def read_turn_order(
    cur: Cursor,
    view: ThreadView,
    cursor: TurnCursor,
    budget: ReadBudget,
    include_empty: bool,
    *,
    mask: int,
) -> tuple[list[TurnChunk], TurnCursor | None]:
    chunks: list[TurnChunk] = []
    number = check_view(cur, view, mask)
    if number is None:
        return chunks, None
    from_turn = to_column(cursor.turn)
    first = True
    while True:
        cur.execute(
            "SELECT turn, finished, event_count, last_position FROM turnstore_turns "
            "WHERE number = %s AND turn "
            + (">= %s" if first else "> %s")
            + " ORDER BY turn LIMIT %s",
            (number, from_turn, _PAGE),
        )
        turns = cur.fetchall()
        first = False
        if not turns:
            return chunks, None
        for column, finished, count, last_position in turns:
            from_turn = int(column)
            turn = from_column(from_turn)
            resuming = turn == cursor.turn
            after = cursor.after_position if resuming else -1
            skip = cursor.skip if resuming else 0
            # A turn's events end at its last position: no query past it, none
            # for an empty turn.
            end = min(view.end_position, int(last_position) + 1) if count else 0
            events, last = _turn_records(cur, number, from_turn, after, end, budget, skip)
            fresh = after < 0 and not (resuming and cursor.skip)
            if events or (include_empty and fresh):
                chunks.append(TurnChunk(turn, bool(finished), events))
            if budget.spent:
                return chunks, TurnCursor(turn=turn, after_position=last)


def _turn_records(
    cur: Cursor,
    number: int,
    column: int,
    after: int,
    end: int,
    budget: ReadBudget,
    skip: int,
) -> tuple[list[bytes], int]:
    """Records of one turn after ``after``, below ``end``, less ``skip``; and the last read.

    Each page first reads the records' sizes (``octet_length`` reads a
    TOASTed value's stored length, not the value), then fetches only the
    records the budget takes: psycopg receives every row a query selects,
    so a page of 512 large events would otherwise arrive whole (and as hex
    text) to fill a 4 MiB budget.
    """
    out: list[bytes] = []
    last = after
    while not budget.spent and last + 1 < end:
        page = min(budget.events_left, _PAGE)
        cur.execute(
            "SELECT position, octet_length(record) FROM turnstore_events "
            "WHERE number = %s AND turn = %s AND position > %s AND position < %s "
            "ORDER BY turn, position OFFSET %s LIMIT %s",
            (number, column, last, end, skip, page),
        )
        sizes = cur.fetchall()
        skip = 0
        if not sizes:
            break
        taken, room = 0, budget.bytes_left
        for _, size in sizes:
            taken += 1
            room -= int(size)
            if room <= 0:
                break
        cur.execute(
            "SELECT position, record FROM turnstore_events WHERE number = %s AND turn = %s "
            "AND position >= %s AND position <= %s ORDER BY turn, position",
            (number, column, int(sizes[0][0]), int(sizes[taken - 1][0])),
            binary=True,
        )
        for position, record in cur.fetchall():
            last = int(position)
            out.append(bytes(record))
            if budget.spend(out[-1]):
                break
        if len(sizes) < page and taken == len(sizes):
            break  # the turn's last page: asking again would only return nothing
    return out, last
