"""Conditional appends and reads from the end over the wire (issue 21, items 7-8).

The real daemon (both backends) and the real Python client, both write
modes (the shared append stream and unary calls), plus scoped tokens: the
same rules as any append or read. The engines' own rules and read costs are
in ``tests/test_conditional_append.py``; TypeScript and Rust run the same
steps in the cross-language scenario.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from tests.support.daemon import Daemon
from tests.test_scopes import ADMIN, ALICE, READER, access_args
from turnstore import AgentEventEnvelope, TurnstoreClient
from turnstore.errors import InvalidArgumentError, PermissionDeniedError, VersionConflictError
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc


def delta(text: str, event_id: str | None = None) -> AgentEventEnvelope:
    return AgentEventEnvelope(
        event_id or str(uuid.uuid4()),
        0,
        "2026-01-01T00:00:00Z",
        {"type": "text_delta", "delta": text},
    )


@pytest.mark.parametrize("write_mode", ["stream", "unary"])
async def test_conditional_appends_and_reads_from_the_end(
    start_daemon: Callable[..., Daemon], backend_args: list[str], write_mode: str
) -> None:
    daemon = start_daemon("postgres" if backend_args else "lmdb")
    async with TurnstoreClient(daemon.target, write_mode=write_mode) as client:  # type: ignore[arg-type]
        events = client.events
        first = delta("a")
        assert await events.append("t", 1, first, expected_next_position=0) == 0
        assert await events.append_many(
            "t", 1, [delta("b"), delta("c")], expected_next_position=1
        ) == [1, 2]
        with pytest.raises(VersionConflictError) as caught:
            await events.append("t", 1, delta("stale"), expected_next_position=1)
        # The thread's next position: a trailer (unary) or the item's error (stream).
        assert caught.value.current_version == 3
        # A retry of a stored event (its acknowledgement lost) keeps its position.
        assert await events.append("t", 1, first, expected_next_position=0) == 0
        for n in range(3, 10):
            await events.append("t", 2, delta(str(n)))
        assert await events.event_count("t") == 10

        newest = [e.position async for e in events.read_events("t", newest_first=True, limit=3)]
        assert newest == [9, 8, 7]
        skipped = events.read_events("t", 2, newest_first=True, limit=2)
        assert [e.position async for e in skipped] == [7, 6]
        assert [e.position async for e in events.read_events("t", 4, limit=2)] == [4, 5]
        assert [e.position for e in await events.last_events("t", 4)] == [6, 7, 8, 9]
        assert [e.position for e in await events.last_events("t", 50)] == list(range(10))
        assert await events.last_events("t", 0) == []
        assert await events.last_events("unknown", 5) == []
        texts = [e.envelope.event["delta"] for e in await events.last_events("t", 2)]
        assert texts == ["8", "9"]
        turn_order = events.read_events("t", 1, order="turn", limit=2)
        assert [e.position async for e in turn_order] == [1, 2]
        with pytest.raises(ValueError, match="commit order"):
            [e async for e in events.read_events("t", order="turn", newest_first=True)]


async def test_the_daemon_refuses_what_the_client_would_not_send(daemon: Daemon) -> None:
    thread = f"t-{uuid.uuid4()}"
    async with grpc.aio.insecure_channel(daemon.target) as channel:
        stub = pb_grpc.EventStoreServiceStub(channel)
        request = pb.ReadEventsRequest(
            thread_id=thread, order=pb.EVENT_ORDER_TURN, newest_first=True
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [m async for m in stub.ReadEvents(request)]
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # A bare finish carrying a condition is refused (on its own), not ignored.
        call = stub.AppendStream()
        await call.write(
            pb.AppendStreamRequest(
                request_id=7, thread_id=thread, turn=1, finish_turn=True, expected_next_position=0
            )
        )
        ack = await call.read()
        assert ack.request_id == 7
        assert ack.error.reason == "invalid_argument"
        await call.done_writing()
        stale = pb.AppendRequest(
            thread_id=thread,
            turn=1,
            events=[pb.EventEnvelope(event_id="x", type="text_delta")],
            expected_next_position=5,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Append(stale)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        trailers = dict(caught.value.trailing_metadata() or ())
        assert trailers["turnstore-error"] == "version_conflict"
        assert trailers["turnstore-current-version"] == "0"
        count = await stub.EventCount(pb.EventCountRequest(thread_id=thread))
        assert count.count == 0


async def test_scopes_apply_as_to_any_append_and_read(
    tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon("lmdb", *access_args(tmp_path))
    async with (
        TurnstoreClient(daemon.target, token=ADMIN) as admin,
        TurnstoreClient(daemon.target, token=ALICE) as alice,
        TurnstoreClient(daemon.target, token=READER) as reader,
    ):
        await admin.events.append("bob/chat", 1, delta("secret"))
        await alice.events.append("alice/chat", 1, delta("mine"), expected_next_position=0)
        with pytest.raises(PermissionDeniedError):
            await alice.events.append("bob/chat", 1, delta("x"), expected_next_position=1)
        with pytest.raises(PermissionDeniedError):
            await reader.events.append("alice/chat", 1, delta("x"), expected_next_position=1)
        # A read outside the scope finds nothing, from either end.
        assert await alice.events.last_events("bob/chat", 5) == []
        assert [e async for e in alice.events.read_events("bob/chat", newest_first=True)] == []
        assert len(await reader.events.last_events("alice/chat", 5)) == 1
        with pytest.raises(InvalidArgumentError):
            await alice.events.append("alice/chat", 1, delta("x"), expected_next_position=-1)
