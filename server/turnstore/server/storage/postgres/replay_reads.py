"""The PostgreSQL engine's replay step: one statement, one round trip, several turns.

A replay step reads the thread's counter row, the finishes it may pass, the
events up to its budget and, when asked, whether a watched turn is finished.
Each used to be its own query inside a BEGIN ... COMMIT (seven round trips
with the pool's check), and a step stopped at the first finish, so a thread
of 100-event turns took one step per turn. Here all four are one statement
(:data:`STEP_SQL`): a single statement sees one snapshot of the database by
itself, so it runs outside any transaction (:func:`.read_cursor.read_cursor`
with ``single_statement``). And a step no longer stops at a finish: it
returns events up to ``max_events`` / ``max_bytes`` with every finish they
pass, and the replay layer (:mod:`turnstore.server.replay.replaying`) cuts
it into messages at the finishes' frontiers, so a finish marker still never
precedes its turn's events nor follows a later turn's.
"""

from __future__ import annotations

from typing import Final

from turnstore.server.storage.postgres.tables import from_column, to_column
from turnstore.server.storage.postgres.writes import Cursor
from turnstore.server.storage.values import FinishRecord, ReplayStep, replay_opening

# The row kinds of STEP_SQL's answer.
_THREAD, _FINISH, _EVENT, _WATCHED = 0, 1, 2, 3

# Events are bounded in the statement by a running sum of their stored sizes
# (octet_length reads a TOASTed record's stored length, not the record), so
# only the records the byte budget takes are sent: the one that reaches it is
# the last (its bytes before it are still under the budget). The branches of
# the UNION are told apart by their first column, never by their order.
STEP_SQL: Final = """
WITH thread AS (
    SELECT number, next_position, next_finish_seq FROM turnstore_threads
    WHERE thread_id = %(key)s
), finishes AS (
    SELECT f.seq, f.turn, f.frontier, f.event_count, f.last_position
    FROM turnstore_finishes f JOIN thread t ON f.number = t.number
    WHERE f.seq >= %(first_seq)s AND f.frontier >= %(floor)s
    ORDER BY f.seq LIMIT %(finish_limit)s
), events AS (
    SELECT e.position, e.record,
        sum(octet_length(e.record)) OVER (ORDER BY e.position) - octet_length(e.record) AS before
    FROM turnstore_events e JOIN thread t ON e.number = t.number
    WHERE e.position >= %(start)s AND e.position < least(t.next_position, %(reach)s)
)
SELECT 0, number, next_position, next_finish_seq, NULL::bigint, NULL::bigint, NULL::bytea
FROM thread
UNION ALL
SELECT 1, seq, turn, frontier, event_count, last_position, NULL FROM finishes
UNION ALL
SELECT 2, position, NULL, NULL, NULL, NULL, record FROM events WHERE before < %(max_bytes)s
UNION ALL
SELECT 3, 1, NULL, NULL, NULL, NULL, NULL
FROM turnstore_turns u JOIN thread t ON u.number = t.number
WHERE u.turn = %(watched)s AND u.finished
"""


def replay_step(
    cur: Cursor,
    key: bytes,
    thread_id: str,
    expected_epoch: int | None,
    start_position: int,
    finish_seq: int | None,
    max_events: int,
    watched_turn: int | None,
    max_bytes: int,
    mask: int,
) -> ReplayStep:
    """One replay step in one statement (``mask``: the database's epoch mask).

    The answer is the LMDB engine's (:func:`turnstore.server.storage.lmdb.reads.replay_step`)
    except that the events do not stop at the first finish: they run to
    ``max_events`` events or the one that reaches ``max_bytes``, and
    ``finishes`` are every finish from the requested sequence number on
    whose frontier is at most ``next_position`` (at most ``max_events`` of
    them), so their frontiers may lie among the events. ``finish_seq`` None
    passes over the finishes before ``start_position``.
    """
    cur.execute(
        STEP_SQL,
        {
            "key": key,
            "first_seq": finish_seq or 0,
            # Without a sequence number, the finishes before the start are passed over.
            "floor": start_position if finish_seq is None else 0,
            "finish_limit": max_events + 1,
            "start": start_position,
            "reach": start_position + max_events,
            "max_bytes": max_bytes,
            # No turn watched: NULL, which equals no turn.
            "watched": None if watched_turn is None else to_column(watched_turn),
        },
        binary=True,
    )
    thread: tuple[int, int, int] | None = None
    finish_rows: list[tuple[int, FinishRecord]] = []
    positioned: list[tuple[int, bytes]] = []
    watched = False
    for kind, a, b, c, d, e, record in cur.fetchall():
        if kind == _EVENT:
            positioned.append((a, bytes(record)))
        elif kind == _FINISH:
            finish_rows.append((a, FinishRecord(from_column(b), d, e if d else None, c)))
        elif kind == _THREAD:
            thread = (a, b, c)
        else:
            watched = True
    opening = replay_opening(
        thread_id,
        expected_epoch,
        start_position,
        (thread[0] ^ mask, thread[1]) if thread is not None else None,
    )
    if opening is not None:
        return opening
    assert thread is not None
    number, end_position, finish_count = thread
    # The branches of a UNION come back in any order the plan likes; the
    # events are put in position order (they are a run from start_position).
    positioned.sort(key=lambda pair: pair[0])
    finish_rows.sort(key=lambda pair: pair[0])
    events = [record for _, record in positioned]
    next_position = start_position + len(events)
    finishes: list[FinishRecord] = []
    resume_seq = finish_count
    for seq, finish in finish_rows:
        # Frontiers never decrease along the sequence: the first finish past
        # the events read, and all after it, wait for a later step.
        if finish.frontier > next_position or len(finishes) >= max_events:
            resume_seq = seq
            break
        finishes.append(finish)
    at_end = next_position >= end_position and resume_seq >= finish_count
    return ReplayStep(
        number ^ mask, events, next_position, finishes, resume_seq, at_end, False, watched
    )
