"""Daemons on one database that wait for each other's locks.

- A daemon starting while another daemon's write transaction is open neither
  waits for it nor deadlocks with it (no DDL on a schema already in place).

The order of the waits is pinned down by a blocker transaction holding a
lock and by polling ``pg_stat_activity`` until each engine waits for it; no
timing is involved. Found by tests/test_postgres_crash.py (a restarted
daemon failed to start with "deadlock detected").
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.postgres import PostgresServer
from tests.test_pg_engine import open_engine
from turnstore.server.pg_engine.engine import PostgresEngine


@pytest.fixture
def dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A database of its own on the session's server: its lock waiters are only ours."""
    name = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_server.dsn.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


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
    deadline = time.monotonic() + 10
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            assert row is not None
            if row[0] >= count:
                return True
            if or_until():
                return False
            assert time.monotonic() < deadline, f"{row[0]} lock waiters, not {count}"
            time.sleep(0.01)  # a poll's pace, not a stand-in for the condition


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
