"""Appends and finishes of many threads in two round trips: the hot path of the writer.

A run of consecutive appends in the writer's queue is applied together:

1. One pipelined round trip locks every thread's counter row (in thread id
   order, so that two runs over the same threads do not deadlock) and
   reads the turns and the stored event ids the run's writes touch. The
   reads run after the lock is taken, so they see every commit made before
   it, from any daemon. Threads that do not exist yet are created, locked
   and read in one more round trip.
2. Each write is then checked and applied in queue order against that state
   in memory (:meth:`AppendRun.apply`), with the rules of the LMDB engine's
   ``_write_turn``: a refused write changes nothing.
3. The rows to insert and update are pipelined
   (:meth:`AppendRun.queue_writes`) into the round trip that commits.

Without this, each append paid two round trips and six statements of its own
inside the shared transaction, which capped a busy writer at about 1,500
appends/s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from turnstore.server.storage import records
from turnstore.server.storage.errors import (
    EngineError,
    EventIdConflictError,
    NextPositionConflictError,
    TurnAlreadyFinishedError,
    TurnFinishedError,
)
from turnstore.server.storage.postgres.tables import from_column, to_column
from turnstore.server.storage.postgres.writes import Cursor

# Past this many events, a run inserts them as arrays in one statement.
_ROWS_PER_STATEMENT = 32


@dataclass(frozen=True)
class TurnAppend:
    """Append ``events`` (id, encoded envelope) to a thread's turn, then finish it if asked.

    The write resolves to the events' positions, or (``count_result``) to
    the turn's event count, which is what a finish returns.
    """

    key: bytes
    turn: int
    events: list[tuple[bytes, bytes]]
    finish: bool
    count_result: bool = False
    # Apply only at this next position of the thread (None: unconditionally).
    expected_next_position: int | None = None


@dataclass
class _TurnRow:
    finished: bool
    event_count: int
    last_position: int


@dataclass
class _ThreadState:
    """A locked thread as this transaction sees it, updated as its writes apply."""

    key: bytes
    number: int
    next_position: int
    next_finish: int
    turns: dict[int, _TurnRow] = field(default_factory=dict)
    # Event id -> (position, turn), for the ids this run asked about or added.
    ids: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    # The turns this run's admitted writes changed (none: the thread is unchanged).
    touched_turns: set[int] = field(default_factory=set)


@dataclass
class _Reads:
    """Step 1's statements for some threads, their answers read by :meth:`AppendRun.load`.

    ``turns`` ran once per (thread, turn) pair and ``ids`` once per thread
    asking one event id, in the order of those lists (one result set each);
    a thread asking several ids has a statement of its own in ``id_lists``.
    """

    keys: list[bytes]
    lock: Cursor
    turns: Cursor
    turn_pairs: list[tuple[bytes, int]]
    ids: Cursor
    id_pairs: list[tuple[bytes, bytes]]
    id_lists: list[tuple[bytes, Cursor]]


class AppendRun:
    """The appends of one run; see the module docstring for the three steps."""

    def __init__(self, writes: list[TurnAppend]) -> None:
        self.writes = writes
        self._keys = sorted({write.key for write in writes})
        self._states: dict[bytes, _ThreadState] = {}
        self._reads: list[_Reads] = []
        # Rows for the write statements, filled by apply().
        self._events: list[tuple[int, int, int, bytes, bytes]] = []
        self._finishes: list[tuple[int, int, int, int, int, int]] = []
        # Threads this run created for its writes: removed again if none was
        # admitted (a refused conditional append must leave no empty thread).
        self._created: set[bytes] = set()

    def queue_reads(self, cur: Cursor, keys: list[bytes] | None = None) -> None:
        """Queue step 1 for ``keys`` (default: every thread of the run), in pipeline mode.

        One statement locks every thread; then, per thread, one reads its
        turns and one its stored ids. Those two go through the thread's
        number as a scalar subquery, so that their plan is an index lookup
        on (number, turn) and (number, event_id) whatever the statistics
        say: a plan made while the tables were small (a fresh database
        filling up) otherwise went on scanning them.
        """
        conn = cur.connection
        keys = self._keys if keys is None else keys
        turns_of: dict[bytes, set[int]] = {key: set() for key in keys}
        ids_of: dict[bytes, set[bytes]] = {key: set() for key in keys}
        for write in self.writes:
            if write.key in turns_of:
                turns_of[write.key].add(to_column(write.turn))
                ids_of[write.key].update(event_id for event_id, _ in write.events)
        lock = conn.cursor()
        # In thread id order: two runs over the same threads queue, not deadlock.
        lock.execute(
            "SELECT thread_id, number, next_position, next_finish_seq FROM turnstore_threads "
            "WHERE thread_id = ANY(%s) ORDER BY thread_id FOR UPDATE",
            (keys,),
        )
        # Separate statements after the lock, so that they see every commit
        # made before it (a join in the locking statement would not). One
        # statement per (thread, turn) and per (thread, event id), sent as one
        # executemany each: one cursor and one query, scalar parameters
        # (psycopg dumps a list parameter in Python, element type first: with
        # a statement and a cursor per thread, that was a quarter of a busy
        # writer's time).
        turn_pairs = [(key, turn) for key in keys for turn in sorted(turns_of[key])]
        id_pairs = [(key, next(iter(ids_of[key]))) for key in keys if len(ids_of[key]) == 1]
        turns, ids = conn.cursor(), conn.cursor()
        turns.executemany(
            "SELECT turn, finished, event_count, last_position FROM turnstore_turns "
            "WHERE number = (SELECT number FROM turnstore_threads WHERE thread_id = %s) "
            "AND turn = %s",
            turn_pairs,
            returning=True,
        )
        if id_pairs:
            ids.executemany(
                "SELECT event_id, position, turn FROM turnstore_events "
                "WHERE number = (SELECT number FROM turnstore_threads WHERE thread_id = %s) "
                "AND event_id = %s",
                id_pairs,
                returning=True,
            )
        # A batch of events (an import, an appender's batch): one statement for its ids.
        id_lists: list[tuple[bytes, Cursor]] = []
        for key in keys:
            if len(ids_of[key]) > 1:
                id_rows = conn.cursor()
                id_rows.execute(
                    "SELECT event_id, position, turn FROM turnstore_events "
                    "WHERE number = (SELECT number FROM turnstore_threads WHERE thread_id = %s) "
                    "AND event_id = ANY(%s)",
                    (key, sorted(ids_of[key])),
                )
                id_lists.append((key, id_rows))
        self._reads.append(_Reads(keys, lock, turns, turn_pairs, ids, id_pairs, id_lists))

    def load(self) -> list[bytes]:
        """Read step 1's answers, once its pipeline is synced; the threads that do not exist."""
        missing: list[bytes] = []
        for reads in self._reads:
            for key, number, next_position, next_finish in reads.lock.fetchall():
                self._states[bytes(key)] = _ThreadState(
                    bytes(key), int(number), int(next_position), int(next_finish)
                )
            reads.lock.close()
            # At READ COMMITTED each statement has its own snapshot: the reads
            # may see a thread the lock statement did not (created, or cleared
            # and created again, meanwhile). Such a thread is missing, and is
            # locked and read again with the threads to create.
            for index, (key, _) in enumerate(reads.turn_pairs):
                if index:
                    reads.turns.nextset()
                state = self._states.get(key)
                for turn, finished, count, last in reads.turns.fetchall():
                    if state is not None:
                        state.turns[from_column(int(turn))] = _TurnRow(
                            bool(finished), int(count), int(last)
                        )
            reads.turns.close()
            answers = [(key, reads.ids, index > 0) for index, (key, _) in enumerate(reads.id_pairs)]
            answers += [(key, id_rows, False) for key, id_rows in reads.id_lists]
            for key, id_rows, next_set in answers:
                if next_set:
                    id_rows.nextset()
                state = self._states.get(key)
                for event_id, position, turn in id_rows.fetchall():
                    if state is not None:
                        state.ids[bytes(event_id)] = (int(position), from_column(int(turn)))
            reads.ids.close()
            for _, id_rows in reads.id_lists:
                id_rows.close()
            missing.extend(key for key in reads.keys if key not in self._states)
        self._reads = []
        return missing

    def queue_creates(self, cur: Cursor, keys: list[bytes], now_ns: int) -> None:
        """Queue the rows of threads to create; :meth:`queue_reads` of ``keys`` must follow.

        A thread another daemon creates meanwhile is left as it made it, and
        the reads that follow lock and see that one.
        """
        self._created.update(keys)
        cur.executemany(
            "INSERT INTO turnstore_threads VALUES "
            "(%s, nextval('turnstore_thread_numbers'), 0, 0, %s) ON CONFLICT DO NOTHING",
            [(key, now_ns) for key in keys],
        )

    def apply(self, now_ns: int) -> list[tuple[bool, object]]:
        """Check and apply each write in order; ``(True, result)`` or ``(False, error)`` each."""
        outcomes: list[tuple[bool, object]] = []
        for write in self.writes:
            try:
                outcomes.append((True, self._apply(write, now_ns)))
            except EngineError as error:
                outcomes.append((False, error))
        return outcomes

    def _apply(self, write: TurnAppend, now_ns: int) -> list[int] | int:
        state = self._states[write.key]
        turn = write.turn
        positions: list[int] = []
        new: list[tuple[bytes, bytes, int]] = []
        in_write: dict[bytes, int] = {}
        for event_id, envelope in write.events:
            known = in_write.get(event_id)
            if known is None and event_id in state.ids:
                known, stored_turn = state.ids[event_id]
                if stored_turn != turn:
                    raise EventIdConflictError(event_id.decode(), stored_turn, known)
            if known is None:
                known = state.next_position + len(new)
                in_write[event_id] = known
                new.append((event_id, envelope, known))
            positions.append(known)
        row = state.turns.get(turn)
        count = 0 if row is None else row.event_count
        if row is not None and row.finished:
            if new:
                raise TurnFinishedError(turn)
            if write.finish and not write.events:
                raise TurnAlreadyFinishedError(turn)
            return count if write.count_result else positions  # a retry from before the finish
        if not new and not write.finish:
            return count if write.count_result else positions  # a retry: all already stored
        expected = write.expected_next_position
        if expected is not None and expected != state.next_position:
            thread_id = write.key.decode("utf-8", "surrogatepass")
            raise NextPositionConflictError(thread_id, expected, state.next_position)
        if row is None:
            row = state.turns[turn] = _TurnRow(False, 0, 0)
        if new:
            column = to_column(turn)
            bodies = records.encode_batch(new[0][2], turn, now_ns, [item[1] for item in new])
            for (event_id, _, position), body in zip(new, bodies, strict=True):
                self._events.append((state.number, position, column, event_id, body))
                state.ids[event_id] = (position, turn)
            row.event_count += len(new)
            row.last_position = new[-1][2]
            state.next_position = new[-1][2] + 1
        if write.finish:
            row.finished = True
            self._finishes.append(
                (
                    state.number,
                    state.next_finish,
                    to_column(turn),
                    state.next_position,
                    row.event_count,
                    row.last_position,
                )
            )
            state.next_finish += 1
        state.touched_turns.add(turn)
        return row.event_count if write.count_result else positions

    def queue_writes(self, cur: Cursor, now_ns: int) -> None:
        """Queue step 3 (in pipeline mode): the rows of every write :meth:`apply` admitted."""
        changed = [state for state in self._states.values() if state.touched_turns]
        unused = [key for key in sorted(self._created) if not self._states[key].touched_turns]
        if unused:
            # Still empty (no events, no finish): no other daemon wrote to it either.
            cur.executemany(
                "DELETE FROM turnstore_threads WHERE thread_id = %s "
                "AND next_position = 0 AND next_finish_seq = 0",
                [(key,) for key in unused],
            )
        if not changed:
            return
        if len(self._events) > _ROWS_PER_STATEMENT:
            # One statement over arrays: far cheaper than a thousand inserts.
            cur.execute(
                "INSERT INTO turnstore_events SELECT * FROM "
                "unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bytea[], %s::bytea[])",
                [list(column) for column in zip(*self._events, strict=True)],
                binary=True,
            )
        elif self._events:
            cur.executemany(
                "INSERT INTO turnstore_events VALUES (%s, %s, %s, %s, %s)", self._events
            )
        if self._finishes:
            cur.executemany(
                "INSERT INTO turnstore_finishes VALUES (%s, %s, %s, %s, %s, %s)", self._finishes
            )
        cur.executemany(
            "INSERT INTO turnstore_turns VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (number, turn) DO UPDATE SET finished = EXCLUDED.finished, "
            "event_count = EXCLUDED.event_count, last_position = EXCLUDED.last_position",
            [
                (state.number, to_column(turn), row.finished, row.event_count, row.last_position)
                for state in changed
                for turn in sorted(state.touched_turns)
                for row in (state.turns[turn],)
            ],
        )
        cur.executemany(
            "UPDATE turnstore_threads SET next_position = %s, next_finish_seq = %s, "
            "last_write_ns = %s WHERE thread_id = %s",
            [(state.next_position, state.next_finish, now_ns, state.key) for state in changed],
        )
