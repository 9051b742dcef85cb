"""Several daemons on one PostgreSQL database serve one fleet.

Writers on two daemons append to the same thread and turn at once; a
follower on a third daemon receives every acknowledged event exactly once,
in commit order, positions gap-free, and sees the finish made on another
daemon as the barrier. Also: the backend's own answers (backup refused with
FAILED_PRECONDITION, a newer schema refused naming both versions, the DSN's
password never logged, UNAVAILABLE while the database is down).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import psycopg
import pytest

from tests.support.daemon import Daemon, DaemonStarter
from tests.support.postgres import PASSWORD, PostgresServer
from turnstore import (
    AgentEventEnvelope,
    CaughtUp,
    ConversationSnapshot,
    RetryPolicy,
    StoredEvent,
    TurnFinished,
    TurnstoreClient,
)
from turnstore.errors import TurnstoreError, UnavailableError


def delta(text: str) -> AgentEventEnvelope:
    return AgentEventEnvelope.new({"type": "text_delta", "delta": text})


@pytest.fixture
def fleet(postgres_server: PostgresServer, start_daemon: DaemonStarter) -> list[Daemon]:
    """Three daemons on the session's database (stopped with status 0 after the test)."""
    return [start_daemon("postgres", dsn=postgres_server.dsn) for _ in range(3)]


async def test_writers_on_two_daemons_and_a_follower_on_a_third(fleet: list[Daemon]) -> None:
    thread = f"fleet-{uuid.uuid4()}"
    writer_a, writer_b, reader = (TurnstoreClient(daemon.target) for daemon in fleet)
    acknowledged: dict[int, str] = {}
    try:
        seen: list[tuple[int, str]] = []
        finishes: list[tuple[int, int]] = []
        caught_up = asyncio.Event()

        async def follow() -> None:
            async with reader.events.replay(thread, follow=True, until_turn_finished=1) as replay:
                async for item in replay:
                    if isinstance(item, CaughtUp):
                        caught_up.set()
                    elif isinstance(item, StoredEvent):
                        seen.append((item.position, item.envelope.event_id))
                    elif isinstance(item, TurnFinished):
                        finishes.append((item.turn, len(seen)))

        following = asyncio.create_task(follow())
        await asyncio.wait_for(caught_up.wait(), 30)

        async def write(client: TurnstoreClient, name: str) -> None:
            for n in range(100):
                envelope = delta(f"{name}{n}")
                acknowledged[await client.events.append(thread, 1, envelope)] = envelope.event_id

        await asyncio.gather(write(writer_a, "a"), write(writer_b, "b"))
        await writer_a.events.finish_turn(thread, 1)
        await asyncio.wait_for(following, 30)
        with pytest.raises(TurnstoreError) as refused:
            await writer_b.events.append(thread, 1, delta("late"))
        assert refused.value.reason == "turn_finished"
    finally:
        for client in (writer_a, writer_b, reader):
            await client.aclose()
    assert sorted(acknowledged) == list(range(200))
    assert [position for position, _ in seen] == list(range(200))
    assert dict(seen) == acknowledged
    assert finishes == [(1, 200)]


async def test_backup_is_refused_with_failed_precondition(postgres_daemon: Daemon) -> None:
    async with TurnstoreClient(postgres_daemon.target) as client:
        with pytest.raises(TurnstoreError) as refused:
            await client.admin.backup("copy")
    assert refused.value.reason == "backup_failed"
    assert "pg_dump" in str(refused.value)


def test_a_newer_schema_is_refused_naming_both_versions(
    postgres_server: PostgresServer, postgres_daemon: Daemon, start_daemon: DaemonStarter
) -> None:
    dsn = postgres_server.dsn
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE turnstore_meta SET value = 99 WHERE name = 'schema_version'")
    try:
        refused = start_daemon("postgres", dsn=dsn, start=False)
        with pytest.raises(RuntimeError) as failed:
            refused.start()
        assert "schema version 99, newer than this turnstore (2)" in str(failed.value)
        assert PASSWORD not in str(failed.value)
    finally:
        with psycopg.connect(dsn) as conn:
            conn.execute("UPDATE turnstore_meta SET value = 2 WHERE name = 'schema_version'")


async def test_database_down_is_unavailable_then_writes_resume(
    postgres_server: PostgresServer, start_daemon: DaemonStarter
) -> None:
    daemon = start_daemon("postgres", dsn=postgres_server.dsn)
    thread = f"outage-{uuid.uuid4()}"
    try:
        async with TurnstoreClient(daemon.target) as client:
            assert await client.events.append(thread, 1, delta("before")) == 0
            postgres_server.stop("immediate")
            try:
                with pytest.raises(UnavailableError) as down:
                    await asyncio.wait_for(client.events.append(thread, 1, delta("down")), 10)
                assert down.value.reason == "database_unavailable"
                assert daemon.process is not None and daemon.process.poll() is None
            finally:
                postgres_server.start()
            # The writer reconnects on its next batch; the event stored once.
            again = delta("after")
            assert await client.events.append(thread, 1, again) == 1
            assert await client.events.append(thread, 1, again) == 1
            assert await client.events.event_count(thread) == 2
    finally:
        assert daemon.stop() == 0, daemon.log_lines[-10:]
    assert not any(PASSWORD in line for line in daemon.log_lines)


async def test_a_notification_lost_while_listening_is_down_costs_latency_not_an_event(
    fleet: list[Daemon], postgres_server: PostgresServer
) -> None:
    thread = f"lost-{uuid.uuid4()}"
    writer, reader = TurnstoreClient(fleet[0].target), TurnstoreClient(fleet[2].target)
    try:
        seen: list[int] = []
        caught_up = asyncio.Event()

        async def follow() -> None:
            async with reader.events.replay(thread, follow=True, until_turn_finished=1) as replay:
                async for item in replay:
                    if isinstance(item, CaughtUp):
                        caught_up.set()
                    elif isinstance(item, StoredEvent):
                        seen.append(item.position)

        following = asyncio.create_task(follow())
        await asyncio.wait_for(caught_up.wait(), 30)
        # Every daemon's LISTEN connection drops: the commits below notify nobody.
        with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
            dropped = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query = 'LISTEN turnstore_commits'"
            ).fetchone()
        assert dropped is not None and dropped[0] >= len(fleet)
        for n in range(5):
            await writer.events.append(thread, 1, delta(f"{n}"))
        await writer.events.finish_turn(thread, 1)
        await asyncio.wait_for(following, 30)
    finally:
        await writer.aclose()
        await reader.aclose()
    assert seen == list(range(5))


async def test_while_the_database_is_down_calls_fail_within_a_second_and_followers_hold_on(
    postgres_server: PostgresServer, start_daemon: DaemonStarter
) -> None:
    """UNAVAILABLE within a second for writes and reads; a caught-up follower stays open."""
    daemon = start_daemon("postgres", dsn=postgres_server.dsn)
    thread = f"outage-{uuid.uuid4()}"
    seen: list[int] = []
    enough = {3: asyncio.Event(), 6: asyncio.Event()}
    try:
        async with (
            TurnstoreClient(daemon.target, retry=RetryPolicy(attempts=1)) as once,
            TurnstoreClient(daemon.target) as reader,
        ):

            async def follow() -> None:
                async with reader.events.replay(
                    thread, follow=True, until_turn_finished=1
                ) as replay:
                    async for item in replay:
                        if isinstance(item, StoredEvent):
                            seen.append(item.position)
                            if len(seen) in enough:
                                enough[len(seen)].set()

            following = asyncio.create_task(follow())
            for n in range(3):
                await once.events.append(thread, 1, delta(f"before{n}"))
            await asyncio.wait_for(enough[3].wait(), 30)
            history = once.history(f"outage-key-{uuid.uuid4()}")
            postgres_server.stop("immediate")
            try:
                calls: dict[str, Callable[[], Awaitable[object]]] = {
                    "append": lambda: once.events.append(thread, 1, delta("down")),
                    "finish_turn": lambda: once.events.finish_turn(thread, 1),
                    "get_events": lambda: once.events.get_events(thread),
                    "event_count": lambda: once.events.event_count(thread),
                    "load": history.load,
                    "save": lambda: history.save(ConversationSnapshot([], [])),
                }
                for name, call in calls.items():
                    with pytest.raises(UnavailableError) as down:
                        await asyncio.wait_for(call(), 1.0)  # TimeoutError fails the test
                    assert down.value.reason == "database_unavailable", name
                assert daemon.process is not None and daemon.process.poll() is None
                assert not following.done()
            finally:
                postgres_server.start()
            # The default policy retries until the daemon reaches the database again.
            for n in range(3):
                await reader.events.append(thread, 1, delta(f"after{n}"))
            await reader.events.finish_turn(thread, 1)
            await asyncio.wait_for(following, 30)
    finally:
        assert daemon.stop() == 0, daemon.log_lines[-10:]
    assert seen == list(range(6))
