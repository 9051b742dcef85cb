"""What a PostgreSQL replay and a follower wake cost in statements, counted by the database.

The test's own database logs every statement its sessions run
(``log_statement = all`` on that database only, before the daemon starts),
so what is counted is what the server received, not what the daemon says.
A replay step is one statement without BEGIN or COMMIT, and one step reads
every turn its message budget takes: a replay of five finished turns of ten
events is one statement, sent as five messages (each turn's events, then
its finish marker). A follower woken by a commit reads what is new in one
statement.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psycopg

from tests.support.daemon import DaemonStarter
from tests.support.eventually import eventually_async
from tests.support.postgres import PostgresServer
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

# A log line that starts a message: "<time> [<pid>] <LEVEL>:  <text>" (the default
# log_line_prefix, "%m [%p] "); the lines after it, up to the next, continue it.
_MESSAGE = re.compile(r"^\S+ \S+ \S+ \[(\d+)\] (\w+):  (.*)$")
_STATEMENT = re.compile(r"^(?:statement|execute [^:]*): ?(.*)$", re.DOTALL)


def _statements(log: Path, start: int) -> list[tuple[int, str]]:
    """(pid, statement) of every statement logged after byte ``start`` of ``log``."""
    with log.open("rb") as file:
        file.seek(start)
        text = file.read().decode("utf-8", "replace")
    messages: list[list[str | int]] = []
    for line in text.splitlines():
        found = _MESSAGE.match(line)
        if found is not None:
            messages.append([int(found[1]), found[2], found[3]])
        elif messages:
            messages[-1][2] = f"{messages[-1][2]}\n{line}"
    out = []
    for pid, level, body in messages:
        statement = _STATEMENT.match(str(body)) if level == "LOG" else None
        if statement is not None:
            out.append((int(pid), statement[1]))
    return out


class _Database:
    """The test's database, logging its statements, and the daemon on it."""

    def __init__(self, server: PostgresServer, start_daemon: DaemonStarter) -> None:
        self.log = server.root / "server.log"
        self.dsn = start_daemon.database()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            name = self.dsn.rsplit("/", 1)[1]
            conn.execute(f"ALTER DATABASE {name} SET log_statement = 'all'")
        self.since_start = self.log.stat().st_size
        self.daemon = start_daemon("postgres", dsn=self.dsn)

    def mark(self) -> int:
        return self.log.stat().st_size

    def reader_statements(self, since: int) -> list[str]:
        """The statements the daemon's read pool ran since ``since`` (a :meth:`mark`).

        The daemon's sessions are those on the database now; its writer is the
        one that ran pg_notify, its listener the one that ran LISTEN.
        """
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        daemon = {int(row[0]) for row in rows}
        others = {
            pid
            for pid, text in _statements(self.log, self.since_start)
            if "pg_notify" in text or text.startswith("LISTEN")
        }
        return [
            text
            for pid, text in _statements(self.log, since)
            if pid in daemon and pid not in others
        ]


def _write(thread: str, turn: int, events: int, first: int) -> pb.AppendStreamRequest:
    """One commit: ``events`` events appended to ``turn``, and the turn finished."""
    envelopes = [pb.EventEnvelope(event_id=f"e{first + n}", type="x") for n in range(events)]
    return pb.AppendStreamRequest(
        request_id=turn, thread_id=thread, turn=turn, events=envelopes, finish_turn=True
    )


async def _append(stub: pb_grpc.EventStoreServiceStub, *writes: pb.AppendStreamRequest) -> None:
    acks = [ack async for ack in stub.AppendStream(iter(writes))]
    assert [ack.HasField("error") for ack in acks] == [False] * len(writes)


async def test_a_replay_of_five_turns_is_one_statement_sent_as_five_messages(
    postgres_server: PostgresServer, start_daemon: DaemonStarter
) -> None:
    database = _Database(postgres_server, start_daemon)
    thread = f"t-{uuid.uuid4()}"
    async with grpc.aio.insecure_channel(database.daemon.target) as channel:
        stub = pb_grpc.EventStoreServiceStub(channel)
        await _append(stub, *[_write(thread, turn, 10, 10 * turn) for turn in range(1, 6)])
        request = pb.ReplayRequest(thread_id=thread)
        # A first replay opens the pool's connection (its setup is not the replay's).
        assert len([m async for m in stub.Replay(request)]) == 5
        since = database.mark()
        messages = [message async for message in stub.Replay(request)]
        statements = database.reader_statements(since)
    assert [(len(m.events), [f.turn for f in m.finished_turns]) for m in messages] == [
        (10, [turn]) for turn in range(1, 6)
    ]
    assert [m.events[-1].position for m in messages] == [9, 19, 29, 39, 49]
    assert [m.caught_up for m in messages] == [False] * 4 + [True]
    # One statement for the whole replay: no BEGIN, COMMIT or pool check, one step.
    assert len(statements) == 1, statements
    assert "turnstore_events" in statements[0]


async def test_a_follower_wake_is_one_statement(
    postgres_server: PostgresServer, start_daemon: DaemonStarter
) -> None:
    database = _Database(postgres_server, start_daemon)
    thread = f"t-{uuid.uuid4()}"
    async with grpc.aio.insecure_channel(database.daemon.target) as channel:
        stub = pb_grpc.EventStoreServiceStub(channel)
        await _append(stub, _write(thread, 1, 4, 0))
        call = stub.Replay(pb.ReplayRequest(thread_id=thread, follow=True))
        responses: AsyncIterator[pb.ReplayResponse] = call.__aiter__()
        try:
            first = await anext(responses)
            assert first.caught_up and len(first.events) == 4
            since = database.mark()
            await _append(stub, _write(thread, 2, 3, 4))
            woken = await anext(responses)
            assert [e.position for e in woken.events] == [4, 5, 6]
            assert [f.turn for f in woken.finished_turns] == [2]
            # The step that answered is in the log (the database logs a statement
            # as it starts it); a tick may have woken the follower once more.
            statements = await eventually_async(
                lambda: database.reader_statements(since), what="the wake's statements"
            )
        finally:
            call.cancel()
    # Each wake read the thread in one statement: no BEGIN, COMMIT, counter
    # row, finishes or second page of its own.
    assert 1 <= len(statements) <= 3, statements
    assert all("turnstore_events" in text for text in statements), statements
