"""Honest cursors: a replay cursor never answered with a silent "caught up".

A cursor past the end of its thread (it was never handed out for it) is
refused with OUT_OF_RANGE / CursorOutOfRangeError over gRPC and an ``error``
event over SSE; a database restored from a backup gives every thread a new
epoch, so a reader's cursor from before the restore reports the thread
cleared, and a reader starting again gets every event exactly once. The last
position delivered stays a valid cursor however fast the thread grows, also
across two daemons on one PostgreSQL database. Against real daemons, on both
backends where the backend matters.
"""

from __future__ import annotations

import asyncio
import subprocess
import urllib.parse
from collections.abc import AsyncIterable
from pathlib import Path

import aiohttp
import grpc
import psycopg
import pytest

from tests.support.daemon import Daemon, DaemonStarter
from tests.support.postgres import PostgresServer
from tests.support.sse_client import open_stream
from tests.test_operations import admin_cli
from turnstore import (
    AgentEventEnvelope,
    CaughtUp,
    CursorOutOfRangeError,
    ReplayItem,
    StoredEvent,
    ThreadCleared,
    TurnstoreClient,
)

DEADLINE_SECONDS = 60.0


@pytest.fixture(params=["lmdb", "postgres"])
def daemon(request: pytest.FixtureRequest, daemon: Daemon) -> Daemon:
    """The shared daemon of each backend."""
    if request.param == "postgres":
        shared: Daemon = request.getfixturevalue("postgres_daemon")
        return shared
    return daemon


def delta(text: str) -> AgentEventEnvelope:
    return AgentEventEnvelope.new({"type": "text_delta", "delta": text})


def texts(items: list[ReplayItem]) -> list[str]:
    return [item.envelope.event["delta"] for item in items if isinstance(item, StoredEvent)]


async def collect(client: TurnstoreClient, thread: str, **kwargs: object) -> list[ReplayItem]:
    replay = client.events.replay(thread, **kwargs)  # type: ignore[arg-type]
    return await asyncio.wait_for(_items(replay), DEADLINE_SECONDS)


async def _items(replay: AsyncIterable[ReplayItem]) -> list[ReplayItem]:
    return [item async for item in replay]


async def write(client: TurnstoreClient, thread: str, first: int, count: int) -> None:
    """Events ``e<first>`` .. ``e<first+count-1>``, a turn per 10."""
    for start in range(first, first + count, 10):
        batch = [delta(f"e{n}") for n in range(start, min(start + 10, first + count))]
        await client.events.append_many(thread, start // 10 + 1, batch)


# -- past the end ------------------------------------------------------------------


async def test_a_cursor_past_the_end_is_refused_not_answered_caught_up(
    daemon: Daemon, thread_id: str
) -> None:
    async with TurnstoreClient(daemon.target) as client:
        await write(client, thread_id, 0, 105)
        whole = client.events.replay(thread_id)
        assert len(texts(await _items(whole))) == 105
        epoch = whole.epoch
        assert epoch is not None and whole.last_position == 104
        for after, kwargs in (
            (500, {"epoch": epoch}),
            (500, {}),
            (105, {"epoch": epoch}),
            (105, {"follow": True}),
            (2**63 - 1, {"epoch": epoch, "follow": True}),
        ):
            with pytest.raises(CursorOutOfRangeError, match="has 105 events") as raised:
                await collect(client, thread_id, after=after, **kwargs)
            assert raised.value.code == grpc.StatusCode.OUT_OF_RANGE
            assert raised.value.reason == "cursor_out_of_range"
        # The last position delivered is the end, not past it.
        assert await collect(client, thread_id, after=104, epoch=epoch) == [CaughtUp(105)]
        assert texts(await collect(client, thread_id, after=99, epoch=epoch)) == [
            f"e{n}" for n in range(100, 105)
        ]
        # A thread that does not exist has no positions: without an epoch any
        # cursor is refused; with one, it is the cleared thread it was.
        missing = f"{thread_id}-missing"
        with pytest.raises(CursorOutOfRangeError, match="has 0 events"):
            await collect(client, missing, after=0)
        assert await collect(client, missing, after=3, epoch=epoch) == [ThreadCleared(4)]
        assert await collect(client, missing) == [CaughtUp(0)]
        # The EventStore contract is unchanged: an offset past the end reads nothing.
        assert await client.events.get_events_since(thread_id, 500) == []
        assert len(await client.events.get_events_since(thread_id, 100)) == 5


async def test_the_last_position_delivered_stays_valid_while_writers_append(
    daemon: Daemon, thread_id: str
) -> None:
    """Resume from each last position at once, while a writer appends: never refused."""
    total = 400
    async with TurnstoreClient(daemon.target) as client:
        await write(client, thread_id, 0, 1)
        writer = asyncio.create_task(write(client, thread_id, 1, total - 1))
        received: list[str] = []
        after: int | None = None
        epoch: int | None = None
        deadline = asyncio.get_running_loop().time() + DEADLINE_SECONDS
        while len(received) < total:
            assert asyncio.get_running_loop().time() < deadline, len(received)
            replay = client.events.replay(thread_id, after=after, epoch=epoch)
            got = texts(await _items(replay))
            received += got
            after, epoch = replay.last_position, replay.epoch
        await writer
        assert received == [f"e{n}" for n in range(total)]


async def test_a_cursor_from_one_daemon_of_a_fleet_works_on_the_other(
    start_daemon: DaemonStarter,
) -> None:
    """Two daemons on one database: resume on B right after reading on A, while A writes."""
    total = 300
    dsn = start_daemon.database()
    first, second = start_daemon("postgres", dsn=dsn), start_daemon("postgres", dsn=dsn)
    async with (
        TurnstoreClient(first.target) as on_a,
        TurnstoreClient(second.target) as on_b,
    ):
        thread = "fleet-cursor"
        await write(on_a, thread, 0, 1)
        writer = asyncio.create_task(write(on_a, thread, 1, total - 1))
        received: list[str] = []
        after: int | None = None
        epoch: int | None = None
        turn = 0
        deadline = asyncio.get_running_loop().time() + DEADLINE_SECONDS
        while len(received) < total:
            assert asyncio.get_running_loop().time() < deadline, len(received)
            reader = (on_a, on_b)[turn % 2]
            turn += 1
            replay = reader.events.replay(thread, after=after, epoch=epoch)
            received += texts(await _items(replay))
            after, epoch = replay.last_position, replay.epoch
        await writer
        assert received == [f"e{n}" for n in range(total)]
    assert first.stop() == 0, first.log_lines[-10:]
    assert second.stop() == 0, second.log_lines[-10:]


@pytest.mark.parametrize("backend", ["lmdb", "postgres"])
async def test_a_cursor_of_another_database_reports_a_reset(
    backend: str, start_daemon: DaemonStarter
) -> None:
    """Each database has epochs of its own: a reader sent to another daemon (an
    import, a second LMDB daemon behind a balancer) is told, never resumed."""
    first, second = start_daemon(backend), start_daemon(backend)
    thread = "moved"
    async with (
        TurnstoreClient(first.target) as on_first,
        TurnstoreClient(second.target) as on_second,
    ):
        await write(on_first, thread, 0, 100)
        replay = on_first.events.replay(thread)
        assert len(texts(await _items(replay))) == 100
        await write(on_second, thread, 1000, 120)
        stale = await collect(on_second, thread, after=replay.last_position, epoch=replay.epoch)
        assert stale == [ThreadCleared(100)]


# -- the event stream ------------------------------------------------------------------


@pytest.fixture
def web_daemon(start_daemon: DaemonStarter) -> tuple[Daemon, str]:
    """A daemon with the HTTP listener (stopped with status 0 after the test)."""
    process = start_daemon("lmdb", "--http-listen", "127.0.0.1:0")
    return process, process.serving["http"]


def events_url(base: str, thread: str, **params: object) -> str:
    quoted = urllib.parse.quote(thread, safe="")
    query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
    return f"{base}/v1/threads/{quoted}/events" + (f"?{query}" if query else "")


async def test_the_event_stream_reports_a_cursor_past_the_end_with_an_error_event(
    web_daemon: tuple[Daemon, str],
) -> None:
    daemon, base = web_daemon
    thread = "sse-past-the-end"
    async with TurnstoreClient(daemon.target) as client:
        await write(client, thread, 0, 105)
        replay = client.events.replay(thread)
        await _items(replay)
        epoch = replay.epoch
    async with aiohttp.ClientSession() as http:
        for url, last_id in (
            (events_url(base, thread, after="500"), None),
            (events_url(base, thread, after=f"{epoch}:105"), None),
            (events_url(base, thread), f"{epoch}:500"),
            (events_url(base, thread, follow=0), f"{epoch}:200:3"),
        ):
            stream = await open_stream(http, url, last_event_id=last_id)
            events = await stream.rest(timeout=DEADLINE_SECONDS)
            assert [event.name for event in events] == ["error", "end"], (url, events)
            error = events[0].json()
            assert error["error"] == "cursor_out_of_range"
            assert error["next_position"] == 105
            assert "has 105 events" in error["message"]
            assert events[1].json() == {"reason": "cursor_out_of_range"}
            end_id = events[1].id
            assert end_id is not None and end_id.endswith(":end")
            # The browser's reconnect with the end id is told to stop (204).
            again = await http.get(events_url(base, thread), headers={"Last-Event-ID": end_id})
            assert again.status == 204
        # The last position delivered is still a valid cursor.
        stream = await open_stream(http, events_url(base, thread, follow=0, after=f"{epoch}:104"))
        assert [event.name for event in await stream.rest()] == ["caught_up", "end"]


# -- restored backups -------------------------------------------------------------------


async def test_a_reader_of_a_restored_backup_is_told_to_reset_and_then_gets_every_event_once(
    tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    """Reader at 99, backup taken at 50 restored, 30 (and 60) new events written."""
    backups = tmp_path / "backups"
    backups.mkdir()
    source = start_daemon(
        "lmdb",
        "--backup-dir",
        str(backups),
        "--http-listen",
        "127.0.0.1:0",
        data_dir=tmp_path / "source",
    )
    short, long = "restored-short", "restored-long"
    async with TurnstoreClient(source.target) as client:
        for thread in (short, long):
            await write(client, thread, 0, 50)
        result = await admin_cli("backup", "at-50", "--target", source.target)
        assert result.returncode == 0, result.stderr
        cursors: dict[str, tuple[int, int | None]] = {}
        for thread in (short, long):
            await write(client, thread, 50, 50)
            replay = client.events.replay(thread)
            assert len(texts(await _items(replay))) == 100
            assert replay.last_position == 99 and replay.epoch is not None
            cursors[thread] = (replay.last_position, replay.epoch)
    assert source.stop() == 0

    restored = start_daemon("lmdb", "--http-listen", "127.0.0.1:0", data_dir=backups / "at-50")
    started = restored.serving
    assert started.get("restored_backup_new_epochs") is True, started
    base = started["http"]
    try:
        async with TurnstoreClient(restored.target) as client:
            await write(client, short, 1000, 30)  # positions 50-79
            await write(client, long, 1000, 60)  # positions 50-109: past the old cursor
            expected = {
                short: [f"e{n}" for n in range(50)] + [f"e{n}" for n in range(1000, 1030)],
                long: [f"e{n}" for n in range(50)] + [f"e{n}" for n in range(1000, 1060)],
            }
            for thread, (after, epoch) in cursors.items():
                # The old cursor reports the reset, never "caught up" or events 100+.
                assert await collect(client, thread, after=after, epoch=epoch) == [
                    ThreadCleared(after + 1)
                ], thread
                follower = await collect(client, thread, after=after, epoch=epoch, follow=True)
                assert follower == [ThreadCleared(after + 1)], thread
                # Starting again from the reset point: every event exactly once.
                again = client.events.replay(thread)
                assert texts(await _items(again)) == expected[thread]
                assert again.epoch not in (None, epoch)
            async with aiohttp.ClientSession() as http:
                for thread, (after, epoch) in cursors.items():
                    stream = await open_stream(
                        http, events_url(base, thread), last_event_id=f"{epoch}:{after}"
                    )
                    names = [event.name for event in await stream.rest(DEADLINE_SECONDS)]
                    assert names == ["thread_cleared", "end"], (thread, names)
        # A restart keeps the restored database's epochs: its own cursors stay valid.
        epochs: dict[str, tuple[int | None, int | None]] = {}
        async with TurnstoreClient(restored.target) as client:
            for thread in cursors:
                replay = client.events.replay(thread)
                await _items(replay)
                epochs[thread] = (replay.last_position, replay.epoch)
        assert restored.stop() == 0
        assert restored.start().get("restored_backup_new_epochs") is None
        async with TurnstoreClient(restored.target) as client:
            await write(client, short, 2000, 1)
            last, last_epoch = epochs[short]
            assert texts(await collect(client, short, after=last, epoch=last_epoch)) == ["e2000"]
    finally:
        if restored.process is not None and restored.process.poll() is None:
            assert restored.stop() == 0, restored.log_lines[-20:]


async def test_each_copy_of_one_backup_gets_epochs_of_its_own(
    tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    """Restoring the same backup twice: a cursor of the first restore is stale in the second."""
    backups = tmp_path / "backups"
    backups.mkdir()
    source = start_daemon("lmdb", "--backup-dir", str(backups), data_dir=tmp_path / "source")
    async with TurnstoreClient(source.target) as client:
        await write(client, "t", 0, 10)
        result = await admin_cli("backup", "copy", "--target", source.target)
        assert result.returncode == 0, result.stderr
    assert source.stop() == 0
    pristine = (backups / "copy" / "data.mdb").read_bytes()
    epochs: list[int | None] = []
    for n in range(2):
        data_dir = tmp_path / f"restore-{n}"
        data_dir.mkdir()
        (data_dir / "data.mdb").write_bytes(pristine)
        restored = start_daemon(data_dir=data_dir)
        assert restored.serving.get("restored_backup_new_epochs") is True
        async with TurnstoreClient(restored.target) as client:
            if epochs:
                assert await collect(client, "t", after=9, epoch=epochs[0]) == [ThreadCleared(10)]
            replay = client.events.replay("t")
            assert len(texts(await _items(replay))) == 10
            epochs.append(replay.epoch)
        assert restored.stop() == 0
    assert len(set(epochs)) == 2


async def test_postgres_tables_restored_into_another_database_get_new_epochs(
    postgres_server: PostgresServer, tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    """pg_dump at 50, reader at 99, restored into a new database, 30 new events.

    And the documented step for a restore into the same database
    (``database_oid`` set to 0) does the same.
    """
    dump = tmp_path / "turnstore.sql"
    thread = "pg-restored"
    source_dsn, new_dsn = start_daemon.database(), start_daemon.database()
    source = start_daemon("postgres", dsn=source_dsn, data_dir=tmp_path / "a")
    assert source.serving.get("restored_backup_new_epochs") is None
    async with TurnstoreClient(source.target) as client:
        await write(client, thread, 0, 50)
        await asyncio.to_thread(
            subprocess.run,
            [
                str(postgres_server.bin_dir / "pg_dump"),
                "--table=turnstore_*",
                "-f",
                str(dump),
                source_dsn,
            ],
            check=True,
            timeout=120,
        )
        await write(client, thread, 50, 50)
        replay = client.events.replay(thread)
        assert len(texts(await _items(replay))) == 100
        cursor = (replay.last_position, replay.epoch)
    assert source.stop() == 0
    await asyncio.to_thread(
        subprocess.run,
        [
            str(postgres_server.bin_dir / "psql"),
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            str(dump),
            new_dsn,
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    restored = start_daemon("postgres", dsn=new_dsn, data_dir=tmp_path / "b")
    assert restored.serving.get("restored_backup_new_epochs") is True
    async with TurnstoreClient(restored.target) as client:
        await write(client, thread, 1000, 30)
        after, epoch = cursor
        assert await collect(client, thread, after=after, epoch=epoch) == [ThreadCleared(100)]
        again = client.events.replay(thread)
        assert texts(await _items(again)) == [f"e{n}" for n in range(50)] + [
            f"e{n}" for n in range(1000, 1030)
        ]
        new_cursor = (again.last_position, again.epoch)
    # A restart (and a second daemon of the fleet) keeps the new epochs.
    assert restored.stop() == 0
    assert restored.start().get("restored_backup_new_epochs") is None
    async with TurnstoreClient(restored.target) as client:
        after, epoch = new_cursor
        assert await collect(client, thread, after=after, epoch=epoch) == [CaughtUp(80)]
    assert restored.stop() == 0

    # Restored into the same database: the operator marks it by hand.
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("UPDATE turnstore_meta SET value = 0 WHERE name = 'database_oid'")
    same = start_daemon("postgres", dsn=source_dsn, data_dir=tmp_path / "c")
    assert same.serving.get("restored_backup_new_epochs") is True
    async with TurnstoreClient(same.target) as client:
        after, epoch = cursor
        assert await collect(client, thread, after=after, epoch=epoch) == [ThreadCleared(100)]
    assert same.stop() == 0
