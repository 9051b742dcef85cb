"""Idempotent appends, retries, versioned snapshots and configurable limits."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from tests.support.daemon import DaemonStarter
from turnstore import (
    AgentEventEnvelope,
    ConversationSnapshot,
    EventIdConflictError,
    InvalidArgumentError,
    RetryPolicy,
    TurnstoreClient,
    VersionConflictError,
)
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc


def envelope(event_id: str) -> pb.EventEnvelope:
    return pb.EventEnvelope(event_id=event_id, type="text_delta", body=b'{"delta":"x"}')


async def test_a_retried_append_returns_the_original_positions_after_a_crash(
    data_dir: Path,
    start_daemon: DaemonStarter,
) -> None:
    daemon = start_daemon(data_dir=data_dir)
    batch = pb.AppendRequest(thread_id="t", turn=1, events=[envelope("a"), envelope("b")])
    async with grpc.aio.insecure_channel(daemon.target) as channel:
        stub = pb_grpc.EventStoreServiceStub(channel)
        await stub.Append(pb.AppendRequest(thread_id="t", turn=1, events=[envelope("first")]))
        assert list((await stub.Append(batch)).positions) == [1, 2]
    daemon.kill()
    daemon.start()
    async with grpc.aio.insecure_channel(daemon.target) as channel:
        stub = pb_grpc.EventStoreServiceStub(channel)
        # The acknowledgement was lost; the agent retries after the restart.
        assert list((await stub.Append(batch)).positions) == [1, 2]
        await stub.FinishTurn(pb.FinishTurnRequest(thread_id="t", turn=1))
        # ... and once more after the turn was finished in between.
        assert list((await stub.Append(batch)).positions) == [1, 2]
        # A batch with one new event on the finished turn is still refused whole.
        mixed = pb.AppendRequest(thread_id="t", turn=1, events=[envelope("a"), envelope("new")])
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Append(mixed)
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # Duplicates inside one batch are stored once too.
        twice = pb.AppendRequest(thread_id="t", turn=2, events=[envelope("c"), envelope("c")])
        assert list((await stub.Append(twice)).positions) == [3, 3]
        count = await stub.EventCount(pb.EventCountRequest(thread_id="t"))
        assert count.count == 4
    assert daemon.stop() == 0


async def test_an_event_id_reused_in_another_turn_is_refused(client: TurnstoreClient) -> None:
    event = AgentEventEnvelope.new({"type": "x"})
    await client.events.append("conflict", 1, event)
    with pytest.raises(EventIdConflictError, match="position"):
        await client.events.append("conflict", 2, event)


async def test_the_client_retries_while_the_daemon_restarts(
    data_dir: Path, start_daemon: DaemonStarter
) -> None:
    daemon = start_daemon(data_dir=data_dir)
    target = daemon.target
    assert daemon.stop() == 0
    patient = RetryPolicy(attempts=60, initial_backoff=0.05, max_backoff=0.5)
    async with TurnstoreClient(target, retry=patient) as client:
        event = AgentEventEnvelope.new({"type": "x"})
        append = asyncio.create_task(client.events.append("t", 1, event))
        # The first attempts fail while the daemon is down; start it.
        await asyncio.to_thread(daemon.start)
        assert await append == 0
        assert await client.events.append("t", 1, event) == 0
        assert await client.events.event_count("t") == 1
    assert daemon.stop() == 0


def snapshot(text: str) -> ConversationSnapshot:
    return ConversationSnapshot([{"role": "user", "content": text}], [False])


async def test_a_save_with_a_stale_expected_version_changes_nothing(
    client: TurnstoreClient,
) -> None:
    history = client.history("occ")
    await history.delete()
    assert await history.save_versioned(snapshot("v1"), expected_version=0) == 1
    loaded = await history.load_versioned()
    assert loaded is not None and loaded.version == 1
    # Two writers loaded version 1; the first one to save wins.
    assert await history.save_versioned(snapshot("mine"), expected_version=1) == 2
    with pytest.raises(VersionConflictError, match="version 2, not the expected 1") as raised:
        await history.save_versioned(snapshot("theirs"), expected_version=1)
    assert raised.value.current_version == 2
    assert await history.load() == snapshot("mine")
    with pytest.raises(VersionConflictError):
        await history.save_versioned(snapshot("new"), expected_version=0)


async def test_the_newest_versions_are_kept_listed_and_loadable(
    data_dir: Path, start_daemon: DaemonStarter
) -> None:
    daemon = start_daemon("lmdb", "--snapshot-versions", "3", data_dir=data_dir)
    async with TurnstoreClient(daemon.target) as client:
        history = client.history("k")
        for n in range(1, 6):
            assert await history.save_versioned(snapshot(f"s{n}")) == n
        assert [v.version for v in await history.list_versions()] == [5, 4, 3]
        old = await history.load_versioned(3)
        assert old is not None and old.snapshot == snapshot("s3")
        assert await history.load_versioned(2) is None
        assert await history.delete() == 3
        assert await history.load() is None
        assert await history.list_versions() == []
        # Versions never restart, so a writer holding version 5 cannot be fooled.
        assert await history.save_versioned(snapshot("again"), expected_version=0) == 6
        assert await client.history("never").delete() == 0
    assert daemon.stop() == 0


async def test_limits_are_configurable_and_named_in_errors(
    data_dir: Path, start_daemon: DaemonStarter
) -> None:
    daemon = start_daemon(
        "lmdb",
        "--max-thread-id-bytes",
        "8",
        "--max-event-bytes",
        "200",
        "--max-events-per-append",
        "3",
        "--max-snapshot-bytes",
        "100",
        data_dir=data_dir,
    )
    async with TurnstoreClient(daemon.target) as client:
        with pytest.raises(InvalidArgumentError, match=r"thread_id: is 9 bytes.*limit of 8"):
            await client.events.append("123456789", 1, AgentEventEnvelope.new({"type": "x"}))
        big = AgentEventEnvelope.new({"type": "x", "data": "y" * 300})
        with pytest.raises(InvalidArgumentError, match=r"events\[0\].*limit of 200"):
            await client.events.append("t", 1, big)
        four = [AgentEventEnvelope.new({"type": "x"}) for _ in range(4)]
        with pytest.raises(InvalidArgumentError, match="limit of 3 per append"):
            await client.events.append_many("t", 1, four)
        with pytest.raises(InvalidArgumentError, match="snapshot limit of 100"):
            await client.history("k").save(snapshot("z" * 200))
        assert await client.events.append_many("t", 1, four[:3]) == [0, 1, 2]
    assert daemon.stop() == 0


def test_an_impossible_limit_is_refused_at_startup(
    data_dir: Path, start_daemon: DaemonStarter
) -> None:
    daemon = start_daemon("lmdb", "--max-thread-id-bytes", "600", data_dir=data_dir, start=False)
    with pytest.raises(RuntimeError, match="511"):
        daemon.start()
    assert daemon.wait_exit() == 1
