"""Hostile items on AppendStream, the bidirectional append of a live daemon.

Random items (bad threads, turns, envelopes, unknown fields) must each get
their acknowledgement in order, an error only with a reason its code may
carry, and the state afterwards must hold exactly what was acknowledged; an
item that is not a message at all is refused in an acknowledgement of its
own while the stream goes on.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import grpc
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.support.daemon import Daemon
from tests.support.hostile.checker import append_is_valid, valid_name
from tests.support.hostile.strategies import event_lists, thread_ids, u64s
from tests.support.hostile.wire import (
    APPEND_STREAM,
    INVALID,
    MAX_THREAD_ID,
    OK,
    PRECONDITION,
    REASONS,
    Op,
    connect,
)
from turnstore.v1 import turnstore_pb2 as pb

stream_items = st.builds(
    pb.AppendStreamRequest,
    request_id=u64s,
    thread_id=thread_ids,
    turn=st.one_of(st.integers(0, 3), u64s),
    events=st.one_of(st.just([]), event_lists),
    finish_turn=st.booleans(),
)


@st.composite
def stream_bodies(draw: st.DrawFn) -> list[bytes]:
    """The items of one AppendStream call (see also the junk item test below)."""
    items = draw(st.lists(stream_items, min_size=0, max_size=5))
    return [
        item.SerializeToString() + draw(st.sampled_from([b"", b"\xa0\x06\x01"])) for item in items
    ]


ITEM_CODES: Final[dict[int, set[str | None]]] = {
    INVALID.value[0]: {"invalid_argument"},
    PRECONDITION.value[0]: REASONS[PRECONDITION],
    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]: {"storage_full"},
}


@settings(max_examples=120, deadline=None, database=None)
@given(bodies=stream_bodies())
async def test_append_stream_answers_hostile_items_as_the_contract_says(
    hostile: Daemon, bodies: list[bytes]
) -> None:
    async with connect(hostile) as wire:
        items: list[Any] = []
        for body in bodies:
            item = Op(APPEND_STREAM, body).request
            if item is None:
                break
            items.append(item)
        parsed_all = len(items) == len(bodies)
        threads = sorted({i.thread_id for i in items if valid_name(i.thread_id, MAX_THREAD_ID)})
        before = {thread_id: await wire.count(thread_id) for thread_id in threads}
        code, acks, details = await wire.send_stream(APPEND_STREAM, bodies)
        event(f"AppendStream -> {code.name}")
        if code != (OK if parsed_all else INVALID):
            raise wire.fail(
                f"AppendStream of {bodies!r} ended {code.name} ({details!r}); "
                f"{'every item was' if parsed_all else 'an item was not'} an AppendStreamRequest"
            )
        if len(acks) > len(items) or (parsed_all and len(acks) != len(items)):
            raise wire.fail(f"{len(acks)} acknowledgements for {len(items)} items")
        new_positions: dict[str, set[int]] = {thread_id: set() for thread_id in threads}
        for item, ack in zip(items, acks, strict=False):
            if ack.request_id != item.request_id:
                raise wire.fail(f"ack {ack.request_id} out of order, expected {item.request_id}")
            if ack.HasField("error"):
                if ack.positions or ack.error.reason not in ITEM_CODES.get(ack.error.code, set()):
                    raise wire.fail(f"item {item} rejected with {ack}")
                event(f"AppendStream item -> {ack.error.reason}")
                plainly_invalid = not valid_name(item.thread_id, MAX_THREAD_ID) or not (
                    item.events or item.finish_turn
                )
                if plainly_invalid and ack.error.reason != "invalid_argument":
                    raise wire.fail(f"item {item} rejected with {ack}, not invalid_argument")
                continue
            event("AppendStream item -> stored")
            request = pb.AppendRequest(thread_id=item.thread_id, turn=item.turn, events=item.events)
            if (item.events and not append_is_valid(request)) or not (
                item.events or item.finish_turn
            ):
                raise wire.fail(f"invalid item {item} acknowledged as {ack}")
            if len(ack.positions) != len(item.events):
                raise wire.fail(f"item {item} acknowledged with positions {list(ack.positions)}")
            new_positions[item.thread_id] |= {
                p for p in ack.positions if p >= before[item.thread_id]
            }
            if item.finish_turn:
                turn = await wire.turn(item.thread_id, item.turn)
                if turn is None or not turn.finished:
                    raise wire.fail(f"item {item} acknowledged, but its turn is {turn}")
        for thread_id in threads:
            count = await wire.count(thread_id)
            # Every item was acknowledged, unless junk ended the stream early.
            expected = before[thread_id] + len(new_positions[thread_id])
            if count < expected or (parsed_all and count != expected):
                raise wire.fail(f"{thread_id!r}: {count} events, {expected} expected")
            await wire.check_thread(thread_id)
        await wire.check_alive()


@pytest.mark.parametrize("junk", [b"\x00", b"\xff\xff", b"\x12\x02\xc3\x28"])
async def test_an_append_stream_item_that_is_no_message_is_an_invalid_argument(
    hostile: Daemon, junk: bytes
) -> None:
    """The junk is rejected in its own acknowledgement (request_id 0); the stream goes on."""
    thread_id = f"hostile-stream-{uuid.uuid4()}"
    item = pb.AppendStreamRequest(
        request_id=1,
        thread_id=thread_id,
        turn=1,
        events=[pb.EventEnvelope(event_id=str(uuid.uuid4()), type="t")],
    )
    async with connect(hostile) as wire:
        after = pb.AppendStreamRequest(
            request_id=2,
            thread_id=thread_id,
            turn=1,
            events=[pb.EventEnvelope(event_id=str(uuid.uuid4()), type="t")],
        )
        code, acks, details = await wire.send_stream(
            APPEND_STREAM, [item.SerializeToString(), junk, after.SerializeToString()]
        )
        assert code == OK, details
        assert [(a.request_id, list(a.positions), a.error.code) for a in acks] == [
            (1, [0], 0),
            (0, [], INVALID.value[0]),
            (2, [1], 0),
        ]
        assert acks[1].error.reason == "invalid_argument"
        assert "cannot be decoded" in acks[1].error.message
        assert await wire.count(thread_id) == 2
        await wire.check_thread(thread_id)
        await wire.check_alive()
