"""End-to-end behaviour of the real ``turnstore serve`` process."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.daemon import Daemon
from turnstore import (
    AgentEventEnvelope,
    ConversationSnapshot,
    InvalidArgumentError,
    StorageFullError,
    TurnstoreClient,
    UnavailableError,
)
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc


def delta(text: str) -> AgentEventEnvelope:
    return AgentEventEnvelope.new({"type": "text_delta", "delta": text})


@pytest.fixture
async def raw_channel(daemon: Daemon) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(daemon.target) as channel:
        yield channel


async def test_data_survives_a_graceful_restart(data_dir: Path) -> None:
    daemon = Daemon(data_dir)
    daemon.start()
    written = [delta("a"), delta("b")]
    async with TurnstoreClient(daemon.target) as client:
        for envelope in written:
            await client.events.append("t", 1, envelope)
        await client.events.finish_turn("t", 1)
        await client.events.append("t", 2, delta("c"))
        await client.history("conv").save(ConversationSnapshot(["m"], [False]))
    assert daemon.stop() == 0
    assert daemon.log_lines[-1].find('"stopped"') >= 0

    daemon.start()
    async with TurnstoreClient(daemon.target) as client:
        turns = await client.events.get_turns("t")
        assert (turns[0].turn, turns[0].events, turns[0].finished) == (1, written, True)
        assert turns[1].finished is False
        assert await client.history("conv").load() == ConversationSnapshot(["m"], [False])
        assert await client.events.append("t", 2, delta("d")) == 3
    assert daemon.stop() == 0


async def test_acknowledged_writes_survive_sigkill(data_dir: Path) -> None:
    daemon = Daemon(data_dir)
    daemon.start()
    async with TurnstoreClient(daemon.target) as client:
        positions = await client.events.append_many("t", 1, [delta(str(n)) for n in range(100)])
        await client.events.finish_turn("t", 1)
        await client.history("k").save(ConversationSnapshot(["x"], [True]))
    daemon.kill()

    daemon.start()
    async with TurnstoreClient(daemon.target) as client:
        turn = await client.events.get_turn("t", 1)
        assert turn is not None
        assert turn.finished
        assert [e.event["delta"] for e in turn.events] == [str(n) for n in range(100)]
        assert positions == list(range(100))
        assert await client.history("k").load() == ConversationSnapshot(["x"], [True])
    assert daemon.stop() == 0


BAD_APPENDS = [
    (
        pb.AppendRequest(thread_id="", turn=1, events=[pb.EventEnvelope(event_id="e", type="x")]),
        "thread_id",
    ),
    (
        pb.AppendRequest(
            thread_id="x" * 300, turn=1, events=[pb.EventEnvelope(event_id="e", type="x")]
        ),
        "limit of 256",
    ),
    (pb.AppendRequest(thread_id="t", turn=1), "events: must hold at least one event"),
    (
        pb.AppendRequest(thread_id="t", turn=1, events=[pb.EventEnvelope(type="x")]),
        "events[0].event_id",
    ),
    (
        pb.AppendRequest(thread_id="t", turn=1, events=[pb.EventEnvelope(event_id="e")]),
        "events[0].type",
    ),
    (
        pb.AppendRequest(
            thread_id="t", turn=1, events=[pb.EventEnvelope(event_id="e", type="x" * 129)]
        ),
        "limit of 128",
    ),
    (
        pb.AppendRequest(
            thread_id="t",
            turn=1,
            events=[
                pb.EventEnvelope(event_id="e", type="x", body=b'{"b":"' + b"b" * (1 << 20) + b'"}')
            ],
        ),
        "limit of 1048576",
    ),
]


@pytest.mark.parametrize(("request_", "named"), BAD_APPENDS)
async def test_bad_appends_get_invalid_argument_naming_the_problem(
    raw_channel: grpc.aio.Channel, request_: pb.AppendRequest, named: str
) -> None:
    stub = pb_grpc.EventStoreServiceStub(raw_channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Append(request_)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in (raised.value.details() or "")
    assert ("turnstore-error", "invalid_argument") in tuple(raised.value.trailing_metadata() or ())
    # The daemon keeps serving, and nothing was stored.
    count = await stub.EventCount(pb.EventCountRequest(thread_id="t"))
    assert count.count == 0


async def test_bad_reads_and_saves_get_invalid_argument(raw_channel: grpc.aio.Channel) -> None:
    events = pb_grpc.EventStoreServiceStub(raw_channel)
    history = pb_grpc.HistoryStoreServiceStub(raw_channel)
    calls = [
        events.GetTurn(pb.GetTurnRequest(thread_id="")),
        events.EventCount(pb.EventCountRequest(thread_id="")),
        events.Clear(pb.ClearRequest(thread_id="")),
        events.FinishTurn(pb.FinishTurnRequest(thread_id="")),
        history.Save(pb.SaveRequest(key="", data=b"{}")),
        history.Load(pb.LoadRequest(key="k" * 1001)),  # over the 1000-byte key limit
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value
    for stream in (
        events.ListTurns(pb.ListTurnsRequest(thread_id="")),
        events.ReadEvents(pb.ReadEventsRequest(thread_id="t", order=99)),  # type: ignore[arg-type]
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in stream:
                pass
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_errors_become_typed_exceptions_with_the_rpc_error_as_cause(
    client: TurnstoreClient,
) -> None:
    with pytest.raises(InvalidArgumentError, match="limit of 256") as raised:
        await client.events.append("x" * 300, 1, delta("a"))
    assert isinstance(raised.value.__cause__, grpc.aio.AioRpcError)


async def test_an_unreachable_daemon_raises_unavailable(tmp_path: Path) -> None:
    async with TurnstoreClient(f"unix:{tmp_path}/nobody.sock", timeout=5) as client:
        with pytest.raises(UnavailableError):
            await client.events.event_count("t")


async def test_tcp_port_zero_is_reported_in_the_first_log_line(data_dir: Path) -> None:
    daemon = Daemon(data_dir, listen=["127.0.0.1:0", f"unix:{data_dir.parent}/also.sock"])
    first = daemon.start()
    assert first["data_dir"] == str(data_dir.resolve())
    host, port = daemon.addresses[0].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    for target in daemon.addresses:
        async with TurnstoreClient(target) as client:
            await client.events.append(f"via-{target}", 1, delta("x"))
            assert await client.events.event_count(f"via-{target}") == 1
    assert daemon.stop() == 0


async def test_without_a_data_dir_flag_it_serves_under_the_working_directory(
    tmp_path: Path,
) -> None:
    daemon = Daemon(None, listen=["127.0.0.1:0"], cwd=tmp_path)  # type: ignore[arg-type]
    first = daemon.start()
    assert first["data_dir"] == str((tmp_path / "turnstore-data").resolve())
    assert (tmp_path / "turnstore-data" / "data.mdb").exists()
    assert daemon.stop(signal.SIGINT) == 0


async def test_a_second_daemon_on_a_held_directory_refuses_clearly(data_dir: Path) -> None:
    first = Daemon(data_dir)
    first.start()
    second = Daemon(data_dir)
    with pytest.raises(RuntimeError, match="in use by another turnstore process"):
        second.start()
    assert second.wait_exit() == 1
    # The first daemon was not disturbed.
    async with TurnstoreClient(first.target) as client:
        await client.events.append("t", 1, delta("still here"))
    assert first.stop() == 0


async def test_non_loopback_listen_addresses_are_refused(data_dir: Path) -> None:
    daemon = Daemon(data_dir, listen=["0.0.0.0:0"])
    with pytest.raises(RuntimeError, match="not loopback"):
        daemon.start()
    assert daemon.wait_exit() == 1


async def test_a_full_database_refuses_writes_and_keeps_serving_reads(data_dir: Path) -> None:
    daemon = Daemon(data_dir, extra_args=["--max-db-size", "2MiB"])
    daemon.start()
    acknowledged = 0
    async with TurnstoreClient(daemon.target) as client:
        with pytest.raises(StorageFullError, match="ceiling"):
            for index in range(200):
                big = AgentEventEnvelope.new({"type": "blob", "data": f"{index}" + "x" * 50_000})
                await client.events.append("t", 1, big)
                acknowledged += 1
        assert acknowledged > 0
        assert await client.events.event_count("t") == acknowledged
        turn = await client.events.get_turn("t", 1)
        assert turn is not None
        assert len(turn.events) == acknowledged
    assert daemon.stop() == 0


async def test_sigterm_lets_in_flight_writes_finish(data_dir: Path) -> None:
    daemon = Daemon(data_dir)
    daemon.start()
    async with TurnstoreClient(daemon.target) as client:
        thread = f"t-{uuid.uuid4()}"
        writes = [
            asyncio.ensure_future(client.events.append(thread, 1, delta(str(n))))
            for n in range(200)
        ]
        await asyncio.wait(writes, return_when=asyncio.FIRST_COMPLETED)
        assert daemon.process is not None
        os.kill(daemon.process.pid, signal.SIGTERM)
        results = await asyncio.gather(*writes, return_exceptions=True)
    assert daemon.wait_exit() == 0
    acknowledged = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if not isinstance(r, int)]
    assert all(isinstance(r, UnavailableError) for r in refused), refused
    # Everything acknowledged is there after a restart, with gap-free positions.
    daemon.start()
    async with TurnstoreClient(daemon.target) as client:
        assert await client.events.event_count(thread) == len(acknowledged)
        assert sorted(acknowledged) == list(range(len(acknowledged)))
    assert daemon.stop() == 0
