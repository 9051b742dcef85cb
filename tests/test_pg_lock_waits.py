"""Daemons on one database that wait for each other's locks.

- Writes from two engines (two daemons) that wait for one thread's lock see
  what the holder committed: a write of one waits for the thread's counter
  row while another transaction holds it, and that transaction commits a
  change to the turn first. The waiting write must then judge the turn as it
  is now: refuse an append to the turn just finished, and count its events
  on top of those just appended. (In READ COMMITTED, a row locked after a
  wait is re-read at its newest version, but rows its statement joined are
  not: the turn must be read by a statement of its own, after the lock.)
- A daemon starting while another daemon's write transaction is open neither
  waits for it nor deadlocks with it (no DDL on a schema already in place).

The order of the waits is pinned down by a blocker transaction holding a
lock and by polling ``pg_stat_activity`` until each engine waits for it; no
timing is involved. Found by tests/test_postgres_crash.py (an acknowledged
finish was found unfinished; a restarted daemon failed to start with
"deadlock detected").
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.eventually import eventually
from tests.support.postgres import PostgresServer, fresh_database
from tests.test_pg_engine import envelope, open_engine
from turnstore.server.storage.errors import DatabaseUnavailableError, TurnFinishedError
from turnstore.server.storage.postgres.engine import PostgresEngine
from turnstore.server.storage.values import TurnCursor


@pytest.fixture
def dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A database of its own on the session's server: its lock waiters are only ours."""
    with fresh_database(postgres_server) as database:
        yield database


@pytest.fixture
def engines(dsn: str, tmp_path: Path) -> Iterator[list[PostgresEngine]]:
    """Two engines (two daemons) on that database."""
    opened = [open_engine(dsn, tmp_path) for _ in range(2)]
    yield opened
    for engine in opened:
        engine.close()


def hold_thread_lock(dsn: str, thread: str) -> psycopg.Connection[tuple[object, ...]]:
    """A transaction holding ``thread``'s counter row, as another daemon's writer would."""
    blocker = psycopg.connect(dsn)
    row = blocker.execute(
        "SELECT number FROM turnstore_threads WHERE thread_id = %s FOR UPDATE",
        (thread.encode(),),
    ).fetchone()
    assert row is not None
    return blocker


def wait_for_lock_waiters(
    dsn: str, count: int, or_until: Callable[[], bool] = lambda: False
) -> bool:
    """Poll until ``count`` sessions of the database wait for a lock (True), or
    ``or_until()`` holds (False); 10 s at most."""
    with psycopg.connect(dsn, autocommit=True) as conn:

        def outcome() -> str | None:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            assert row is not None
            if row[0] >= count:
                return "waiting"
            return "gave up" if or_until() else None

        found = eventually(outcome, 10, what=f"{count} lock waiters", interval=0.01)
        return found == "waiting"


def test_an_append_waiting_on_the_lock_is_refused_by_the_finish_before_it(
    dsn: str, engines: list[PostgresEngine]
) -> None:
    first, second = engines
    thread = f"t-{uuid.uuid4()}"
    assert first.append(thread, 1, [envelope("a")]).result(10) == [0]
    blocker = hold_thread_lock(dsn, thread)
    try:
        finishing = first.finish_turn(thread, 1)
        wait_for_lock_waiters(dsn, 1)
        appending = second.append(thread, 1, [envelope("late")])
        wait_for_lock_waiters(dsn, 2)
    finally:
        blocker.rollback()
        blocker.close()
    assert finishing.result(10) == 1
    # The finish committed while this append waited: the turn takes no more.
    with pytest.raises(TurnFinishedError):
        appending.result(10)
    turn = first.get_turn(thread, 1)
    assert turn is not None and turn.finished and len(turn.events) == 1


def test_appends_waiting_on_the_lock_count_every_event_of_their_turn(
    dsn: str, engines: list[PostgresEngine]
) -> None:
    first, second = engines
    thread = f"t-{uuid.uuid4()}"
    assert first.append(thread, 1, [envelope("a")]).result(10) == [0]
    blocker = hold_thread_lock(dsn, thread)
    try:
        one = first.append(thread, 1, [envelope("b")])
        wait_for_lock_waiters(dsn, 1)
        other = second.append(thread, 1, [envelope("c")])
        wait_for_lock_waiters(dsn, 2)
    finally:
        blocker.rollback()
        blocker.close()
    assert one.result(10) == [1]
    assert other.result(10) == [2]
    assert first.finish_turn(thread, 1).result(10) == 3
    # Reads in turn order find position 2 through the turn's event count.
    view = first.view(thread)
    assert view.end_position == 3
    assert first.turn_cursor_at_offset(view, 2) == TurnCursor(turn=1, skip=2)


def test_a_daemon_starting_during_a_write_neither_waits_nor_deadlocks(
    dsn: str, engines: list[PostgresEngine], tmp_path: Path
) -> None:
    # The locks every append transaction takes, in its order: the events
    # table (its inserts), then the threads table (its counter's update).
    writing = psycopg.connect(dsn)
    writing.execute("LOCK TABLE turnstore_events IN ROW EXCLUSIVE MODE")
    outcome: list[PostgresEngine | BaseException] = []

    def start() -> None:
        try:
            outcome.append(open_engine(dsn, tmp_path))
        except BaseException as error:
            outcome.append(error)

    starting = threading.Thread(target=start)
    starting.start()
    try:
        waited = wait_for_lock_waiters(dsn, 1, or_until=lambda: bool(outcome))
        # The rest of the write: it commits, whichever way the start went.
        writing.execute("UPDATE turnstore_threads SET last_write_ns = 0 WHERE false")
        writing.commit()
    finally:
        writing.close()
        starting.join(30)
    assert outcome, "the engine did not open"
    opened = outcome[0]
    assert isinstance(opened, PostgresEngine), f"the start failed: {opened!r}"
    opened.close()
    assert not waited, "the start waited for the write transaction"


def test_a_run_waiting_on_a_lock_sees_a_thread_another_daemon_created_meanwhile(
    dsn: str, engines: list[PostgresEngine]
) -> None:
    """At READ COMMITTED the locking statement misses a thread created after it
    started, while the reads after it see that thread: the run must lock and
    read it again, not trip over it (it failed the whole batch with KeyError)."""
    first, second = engines
    held, waiting, created = (f"{name}-{uuid.uuid4()}" for name in ("held", "wait", "new"))
    assert first.append(held, 1, [envelope("h0")]).result(10) == [0]
    assert first.append(waiting, 1, [envelope("w0")]).result(10) == [0]
    blocker = hold_thread_lock(dsn, held)
    try:
        # The writer waits on `held`, so the next two appends queue as one run.
        busy = first.append(held, 1, [envelope("h1")])
        wait_for_lock_waiters(dsn, 1)
        later = first.append(waiting, 1, [envelope("w1")])
        fresh = first.append(created, 1, [envelope("n1")])
        second_blocker = hold_thread_lock(dsn, waiting)
        try:
            blocker.rollback()
            assert busy.result(10) == [1]
            wait_for_lock_waiters(dsn, 1)  # the run's locking statement, on `waiting`
            assert second.append(created, 1, [envelope("n0")]).result(10) == [0]
        finally:
            second_blocker.rollback()
            second_blocker.close()
    finally:
        blocker.close()
    assert later.result(10) == [1]
    assert fresh.result(10) == [1]
    assert first.event_count(created) == 2


def test_a_lock_timeout_fails_only_the_write_that_waited(dsn: str, tmp_path: Path) -> None:
    """An error of the database's own (here its lock_timeout) is no lost connection:
    the batch goes again write by write, so only the write that waited fails."""
    engine = open_engine(f"{dsn}?options=-c%20lock_timeout%3D300", tmp_path)
    try:
        gate, locked, free = (f"{name}-{uuid.uuid4()}" for name in ("gate", "locked", "free"))
        for thread in (gate, locked, free):
            assert engine.append(thread, 1, [envelope("0")]).result(10) == [0]
        gate_blocker = hold_thread_lock(dsn, gate)
        blocker = hold_thread_lock(dsn, locked)
        try:
            # The writer waits on `gate` (300 ms, then that write fails), so the
            # next two appends queue as one run.
            gated = engine.append(gate, 1, [envelope("g")])
            wait_for_lock_waiters(dsn, 1)
            innocent = engine.append(free, 1, [envelope("f")])
            waiting = engine.append(locked, 1, [envelope("l")])
            with pytest.raises(DatabaseUnavailableError, match="lock timeout"):
                gated.result(10)
            assert innocent.result(10) == [1]
            with pytest.raises(DatabaseUnavailableError, match="nothing was written"):
                waiting.result(10)
        finally:
            for held in (gate_blocker, blocker):
                held.rollback()
                held.close()
        # The database was never unreachable: the next write goes straight through.
        assert engine.append(locked, 1, [envelope("l")]).result(10) == [1]
    finally:
        engine.close()
