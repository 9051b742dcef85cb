"""Turn writes: appends (idempotent by event id), the finish barrier, and clearing a thread.

One layer of the LMDB engine (see :mod:`turnstore.server.storage.lmdb.engine`): a mixin over
:class:`_Writer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import lmdb

from turnstore.server.storage import records
from turnstore.server.storage.errors import (
    EventIdConflictError,
    TurnAlreadyFinishedError,
    TurnFinishedError,
)
from turnstore.server.storage.lmdb import schema
from turnstore.server.storage.lmdb.space import (
    estimate_events_bytes,
)
from turnstore.server.storage.lmdb.state import (
    _delete_prefix,
    _get,
)
from turnstore.server.storage.lmdb.writer import _Writer
from turnstore.server.storage.values import (
    NewEvent,
)

T = TypeVar("T")


class _TurnWrites(_Writer):
    """Turn writes: appends (idempotent by event id), the finish barrier, and clearing a thread."""

    def append(
        self, thread_id: str, turn: int, events: Sequence[NewEvent], finish: bool = False
    ) -> Future[list[int]]:
        """Append events, in order, to the end of one turn, atomically.

        Creates the thread and the turn as needed. Resolves to the positions
        given to the events. With ``finish``, the turn is also finished in the
        same commit (``events`` may then be empty). Idempotent by event id:
        an event whose id is already stored in this turn keeps its original
        position and is not stored again, even if the turn was finished
        since. Fails with TurnFinishedError when the turn is finished and an
        event is new (TurnAlreadyFinishedError for a bare finish),
        EventIdConflictError when an id is stored in another turn, and
        InvalidArgumentError (raised at once, not through the future) for an
        empty batch or input over a limit.
        """
        key = self._thread_key(thread_id)
        self._check_turn(turn)
        encoded = self._checked_events(events, finish)

        def apply(txn: lmdb.Transaction, now_ns: int) -> list[int]:
            return self._write_turn(txn, key, turn, encoded, finish, now_ns)[0]

        return self._submit(thread_id, apply)

    def finish_turn(self, thread_id: str, turn: int) -> Future[int]:
        """Record a turn's close barrier; resolves to the turn's event count.

        A turn never appended to becomes an empty finished turn. Fails with
        TurnAlreadyFinishedError when the turn is already finished.
        """
        key = self._thread_key(thread_id)
        self._check_turn(turn)

        def apply(txn: lmdb.Transaction, now_ns: int) -> int:
            return self._write_turn(txn, key, turn, [], True, now_ns)[1]

        return self._submit(thread_id, apply)

    def _write_turn(
        self,
        txn: lmdb.Transaction,
        key: bytes,
        turn: int,
        events: list[tuple[bytes, bytes]],
        finish: bool,
        now_ns: int,
    ) -> tuple[list[int], int]:
        """Append ``events`` (id, envelope) to a turn, then finish it if asked.

        Returns each event's position and the turn's event count. An event
        whose id is already stored in this turn is not stored again: its
        original position is returned.
        Checks everything, the space for what it adds included, before
        writing anything.
        """
        value = _get(txn, key, self._dbs[schema.THREADS])
        if value is not None:
            number, next_position, next_finish, _ = schema.unpack_thread(value)
        else:
            number = next_position = next_finish = 0  # numbered once admitted, below
        ids_db = self._dbs[schema.EVENT_IDS]
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
        turn_value = _get(txn, turn_key, self._dbs[schema.TURNS]) if value is not None else None
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
        added = sum(len(item[0]) + len(item[1]) for item in new)
        estimate = estimate_events_bytes(len(new), added, self.limits.max_event_id_bytes)
        self.space.admit(txn, estimate + 2 * len(key) + 256)
        if value is None:
            number = self._next_number(txn, schema.META_NEXT_THREAD_NUMBER)
            prefix = schema.U64.pack(number)
            turn_key = schema.PAIR.pack(number, turn)
        if new:
            first = new[0][2]
            values = records.encode_batch(first, turn, now_ns, [item[1] for item in new])
            pair, triple = schema.PAIR.pack, schema.TRIPLE.pack
            with txn.cursor(db=self._dbs[schema.EVENTS]) as cursor:
                cursor.putmulti(
                    zip([pair(number, first + n) for n in range(len(new))], values, strict=True)
                )
            with txn.cursor(db=self._dbs[schema.TURN_EVENTS]) as cursor:
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
                db=self._dbs[schema.TURN_FINISHES],
            )
            next_finish += 1
        txn.put(
            turn_key,
            schema.pack_turn(finish, count, last, record_bytes),
            db=self._dbs[schema.TURNS],
        )
        txn.put(
            key,
            schema.pack_thread(number, next_position, next_finish, now_ns),
            db=self._dbs[schema.THREADS],
        )
        by_write = self._dbs[schema.THREADS_BY_WRITE]
        if value is not None:
            txn.delete(
                schema.by_write_key(schema.unpack_thread(value).last_write_ns, key), db=by_write
            )
        txn.put(schema.by_write_key(now_ns, key), b"", db=by_write)
        return positions, count

    def clear(self, thread_id: str) -> Future[int]:
        """Remove a thread entirely; resolves to the number of events removed.

        Succeeds (with 0) for an unknown thread. The thread's next write
        starts it afresh: positions from 0, every turn number free.
        """
        key = self._thread_key(thread_id)

        def apply(txn: lmdb.Transaction, now_ns: int) -> int:
            value = _get(txn, key, self._dbs[schema.THREADS])
            if value is None:
                return 0
            record = schema.unpack_thread(value)
            self._delete_thread(txn, key, record.number)
            return record.next_position

        return self._submit(thread_id, apply, frees=True)

    def _delete_thread(self, txn: lmdb.Transaction, key: bytes, number: int) -> None:
        """Delete a thread's entry and everything stored under its number."""
        prefix = schema.U64.pack(number)
        for name in (
            schema.EVENTS,
            schema.TURN_EVENTS,
            schema.TURNS,
            schema.TURN_FINISHES,
            schema.EVENT_IDS,
        ):
            _delete_prefix(txn, self._dbs[name], prefix)
        value = _get(txn, key, self._dbs[schema.THREADS])
        if value is not None:
            last_write_ns = schema.unpack_thread(value).last_write_ns
            txn.delete(
                schema.by_write_key(last_write_ns, key), db=self._dbs[schema.THREADS_BY_WRITE]
            )
        txn.delete(key, db=self._dbs[schema.THREADS])
        self.space.note_freed()
