"""No poison: nothing one client writes makes a thread unreadable for another.

The Python client refuses values strict JSON cannot carry before sending;
the daemon refuses, with INVALID_ARGUMENT naming the event, any body marked
application/json that is not a strict JSON object, whoever sends it.
"""

from __future__ import annotations

import grpc
import pytest

from tests.support.daemon import Daemon
from turnstore import AgentEventEnvelope, EventFormatError, TurnstoreClient
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc


async def test_the_python_client_refuses_nan_before_sending(daemon: Daemon, thread_id: str) -> None:
    async with TurnstoreClient(daemon.target) as client:
        with pytest.raises(EventFormatError, match=r"event\.v"):
            await client.events.append(
                thread_id, 1, AgentEventEnvelope.new({"type": "metric", "v": float("nan")})
            )
        assert await client.events.event_count(thread_id) == 0


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b'{"v":NaN}', "not strict JSON"),
        (b'{"v":Infinity}', "not strict JSON"),
        (b'{"v":1e999}', "not strict JSON"),
        (b'{"a":1,}', "not strict JSON"),
        (b'{"s":"\\ud800"}', "not strict JSON"),
        (b'{"s":"\xff"}', "not strict JSON"),
        (b"[1,2]", "a JSON list, not an object"),
        (b'"text"', "a JSON str, not an object"),
        (b'{"a":1}{"b":2}', "not strict JSON"),
        (b'{"event_id":"other"}', "envelope keys"),
        (b'{"type":"other"}', "envelope keys"),
    ],
)
async def test_the_daemon_refuses_a_body_that_is_not_a_strict_json_object(
    daemon: Daemon, thread_id: str, body: bytes, says: str
) -> None:
    async with grpc.aio.insecure_channel(daemon.target) as channel:
        stub = pb_grpc.EventStoreServiceStub(channel)
        good = pb.EventEnvelope(event_id="good", type="x", body=b'{"ok":true}')
        bad = pb.EventEnvelope(event_id="bad-one", type="metric", body=body)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Append(pb.AppendRequest(thread_id=thread_id, turn=1, events=[good, bad]))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "events[1].body" in (raised.value.details() or "")
        assert "bad-one" in (raised.value.details() or "")
        assert says in (raised.value.details() or "")
        # Nothing of the batch was stored, and the thread reads in every form.
        count = await stub.EventCount(pb.EventCountRequest(thread_id=thread_id))
        assert count.count == 0


@pytest.mark.parametrize("content_type", ["application/octet-stream", "text/plain", "json"])
async def test_the_daemon_refuses_bodies_in_other_encodings(
    daemon: Daemon, thread_id: str, content_type: str
) -> None:
    async with grpc.aio.insecure_channel(daemon.target) as channel:
        stub = pb_grpc.EventStoreServiceStub(channel)
        raw = pb.EventEnvelope(event_id="bin", type="blob", content_type=content_type, body=b"{}")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Append(pb.AppendRequest(thread_id=thread_id, turn=1, events=[raw]))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "events[0].content_type" in (raised.value.details() or "")


async def test_a_json_content_type_with_parameters_is_checked_and_normalised(
    daemon: Daemon, thread_id: str
) -> None:
    async with grpc.aio.insecure_channel(daemon.target) as channel:
        stub = pb_grpc.EventStoreServiceStub(channel)
        for n, content_type in enumerate(["Application/JSON; charset=utf-8", "application/json"]):
            bad = pb.EventEnvelope(
                event_id=f"bad{n}", type="x", content_type=content_type, body=b"{,}"
            )
            with pytest.raises(grpc.aio.AioRpcError, match="not strict JSON"):
                await stub.Append(pb.AppendRequest(thread_id=thread_id, turn=1, events=[bad]))
            good = pb.EventEnvelope(
                event_id=f"ok{n}", type="x", content_type=content_type, body=b'{"a":1}'
            )
            await stub.Append(pb.AppendRequest(thread_id=thread_id, turn=1, events=[good]))
    async with TurnstoreClient(daemon.target) as client:
        turn = await client.events.get_turn(thread_id, 1)
        assert turn is not None
        assert [e.event for e in turn.events] == [{"type": "x", "a": 1}] * 2
