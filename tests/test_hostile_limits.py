"""The size limits at their boundaries, over raw calls to a live daemon.

One byte under, at and over each limit README.md documents (an event's
encoded size, events per append, a snapshot's size), a request past the
daemon's message limit, and a thread of maximal events that no single
message can hold, which every streaming read must still deliver whole.
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import orjson

from tests.support.daemon import Daemon
from tests.support.hostile.checker import Checker
from tests.support.hostile.wire import (
    INVALID,
    JSON,
    MAX_EVENT,
    MAX_EVENTS,
    MAX_SNAPSHOT,
    MIB,
    OK,
    REPLAY,
    RPCS,
    Op,
    Rpc,
    connect,
)
from turnstore.v1 import turnstore_pb2 as pb


def envelope_of_size(size: int) -> Any:
    """An envelope whose encoded form (as stored) is exactly ``size`` bytes."""
    envelope = pb.EventEnvelope(event_id=str(uuid.uuid4()), type="blob", content_type=JSON)
    envelope.body = b'{"x":"' + b"x" * (size - envelope.ByteSize() - 12) + b'"}'
    while envelope.ByteSize() < size:
        envelope.body = envelope.body[:-2] + b'x"}'
    assert orjson.loads(envelope.body)
    assert envelope.ByteSize() == size
    return envelope


async def test_size_limits_hold_at_their_boundaries(hostile: Daemon) -> None:
    thread_id = f"hostile-sizes-{uuid.uuid4()}"
    async with connect(hostile) as wire:
        checker = Checker(wire)
        for size in (MAX_EVENT - 1, MAX_EVENT, MAX_EVENT + 1):
            request = pb.AppendRequest(thread_id=thread_id, turn=1, events=[envelope_of_size(size)])
            code = await checker.run(Op(RPCS["Append"], request.SerializeToString()))
            assert code == (OK if size <= MAX_EVENT else INVALID)
        for count in (MAX_EVENTS, MAX_EVENTS + 1):
            many = [pb.EventEnvelope(event_id=f"many-{n}", type="t") for n in range(count)]
            request = pb.AppendRequest(thread_id=thread_id, turn=2, events=many)
            code = await checker.run(Op(RPCS["Append"], request.SerializeToString()))
            assert code == (OK if count <= MAX_EVENTS else INVALID)
        for size in (MAX_SNAPSHOT, MAX_SNAPSHOT + 1):
            # A JSON string (the default content type is JSON) of exactly ``size`` bytes.
            data = b'"' + b"s" * (size - 2) + b'"'
            request = pb.SaveRequest(key=f"hostile-size-{size}", data=data)
            code = await checker.run(Op(RPCS["Save"], request.SerializeToString()))
            assert code == (OK if size <= MAX_SNAPSHOT else INVALID)
        # Far past the daemon's message limit (64 MiB) gRPC itself refuses the call.
        huge = pb.SaveRequest(key="hostile-huge", data=b"h" * (100 * MIB))
        code, _, _ = await wire.send(RPCS["Save"], huge.SerializeToString())
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await wire.snapshot("hostile-huge") is None
        await checker.finish()


async def test_a_thread_of_maximal_events_streams_within_the_message_limit(
    hostile: Daemon,
) -> None:
    """ListTurns, ReadEvents and Replay exist so that no read must fit in one message.

    70 events of the maximal encoded size (1 MiB) are 70 MiB, over the
    daemon's message limit (64 MiB): GetTurn of their one turn fails, as
    documented, but every stream must split them over several messages.
    """
    thread_id = f"hostile-maximal-{uuid.uuid4()}"
    events = 70
    async with connect(hostile) as wire:
        for _ in range(0, events, 14):
            batch = [envelope_of_size(MAX_EVENT) for _ in range(14)]
            await wire.call("Append", pb.AppendRequest(thread_id=thread_id, turn=1, events=batch))
        assert await wire.count(thread_id) == events
        code, _, _ = await wire.send(
            RPCS["GetTurn"], pb.GetTurnRequest(thread_id=thread_id, turn=1).SerializeToString()
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        streams: dict[str, tuple[Rpc, Any]] = {
            "ReadEvents (commit order)": (
                RPCS["ReadEvents"],
                pb.ReadEventsRequest(thread_id=thread_id),
            ),
            "ReadEvents (turn order)": (
                RPCS["ReadEvents"],
                pb.ReadEventsRequest(thread_id=thread_id, order=pb.EVENT_ORDER_TURN),
            ),
            "ListTurns": (RPCS["ListTurns"], pb.ListTurnsRequest(thread_id=thread_id)),
            "Replay": (REPLAY, pb.ReplayRequest(thread_id=thread_id)),
        }
        failed = []
        for name, (rpc, request) in streams.items():
            code, responses, details = await wire.send(rpc, request.SerializeToString())
            got = [
                e.position
                for r in responses
                for e in (r.turn.events if rpc is RPCS["ListTurns"] else r.events)
            ]
            if code != OK or got != list(range(events)):
                failed.append(f"{name}: {code.name} {details!r} after {len(got)} events")
        assert not failed, "\n".join(failed)
        await wire.check_alive()
