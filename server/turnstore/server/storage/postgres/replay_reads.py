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

# One statement, four kinds of rows, told apart by their first column (never
# by their order): the thread's counter row, with the first finish past the
# furthest frontier the step could reach (``reach``); the finishes up to that
# frontier; the events; and a row when the watched turn is finished. Each
# reads its index in order from the thread's number (a scalar subquery, so
# that no plan sorts). Events are bounded by a running sum of their stored
# sizes (octet_length reads a TOASTed record's stored length, not the
# record), so only the records the byte budget takes are sent: the one that
# reaches it is the last (the bytes before it are still under the budget).
STEP_SQL: Final = """
WITH thread AS MATERIALIZED (
    SELECT number, next_position, next_finish_seq FROM turnstore_threads
    WHERE thread_id = %(key)s
)
SELECT 0, t.number, t.next_position, t.next_finish_seq, (
    SELECT f.seq FROM turnstore_finishes f
    WHERE f.number = t.number AND f.seq >= %(first_seq)s AND f.frontier > %(reach)s
    ORDER BY f.seq LIMIT 1
), NULL::bigint, NULL::bytea
FROM thread t
UNION ALL (
    SELECT 1, f.seq, f.turn, f.frontier, f.event_count, f.last_position, NULL
    FROM turnstore_finishes f
    WHERE f.number = (SELECT number FROM thread) AND f.seq >= %(first_seq)s
        AND f.frontier >= %(floor)s AND f.frontier <= %(reach)s
    ORDER BY f.seq LIMIT %(finish_limit)s
)
UNION ALL
SELECT 2, e.position, NULL, NULL, NULL, NULL, e.record FROM (
    SELECT position, record,
        sum(octet_length(record)) OVER (ORDER BY position ROWS UNBOUNDED PRECEDING)
            - octet_length(record) AS before
    FROM turnstore_events
    WHERE number = (SELECT number FROM thread) AND position >= %(start)s AND position < %(reach)s
) e WHERE e.before < %(max_bytes)s
UNION ALL
SELECT 3, 1, NULL, NULL, NULL, NULL, NULL FROM turnstore_turns
WHERE number = (SELECT number FROM thread) AND turn = %(watched)s AND finished
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

    The answer is the LMDB engine's (:func:`turnstore.server.storage.lmdb.reads.replay_step`):
    the events do not stop at the first finish but run to ``max_events``
    events or the one that reaches ``max_bytes``, and
    ``finishes`` are every finish from the requested sequence number on
    whose frontier is at most ``next_position`` (at most ``max_events`` of
    them, and then the events stop at the first finish left for the next
    step), so their frontiers may lie among the events. ``finish_seq`` None
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
    # The first finish (from the requested one on) past the furthest frontier
    # this step could reach: where the step resumes when it passes every
    # finish it read (None: no such finish).
    beyond_reach: int | None = None
    finish_rows: list[tuple[int, FinishRecord]] = []
    positioned: list[tuple[int, bytes]] = []
    watched = False
    for kind, a, b, c, d, e, record in cur.fetchall():
        if kind == _EVENT:
            positioned.append((a, bytes(record)))
        elif kind == _FINISH:
            finish_rows.append((a, FinishRecord(from_column(b), d, e if d else None, c)))
        elif kind == _THREAD:
            thread, beyond_reach = (a, b, c), d
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
    resume_seq = finish_count if beyond_reach is None else beyond_reach
    for seq, finish in finish_rows:
        # Frontiers never decrease along the sequence: the first finish past
        # the events read, and all after it, wait for a later step.
        if finish.frontier > next_position:
            resume_seq = seq
            break
        if len(finishes) >= max_events:
            # Past the most finishes a step carries: this one waits for the
            # next step, and so do the events after it, which it precedes.
            resume_seq = seq
            del events[max(finish.frontier - start_position, 0) :]
            next_position = start_position + len(events)
            break
        finishes.append(finish)
    at_end = next_position >= end_position and resume_seq >= finish_count
    return ReplayStep(
        number ^ mask, events, next_position, finishes, resume_seq, at_end, False, watched
    )
