"""Events as JSON rows (EVENT_ENCODING_JSON_ROWS): the same events as StoredEvent messages.

Each read asked both ways from a real daemon, on both backends: the rows
carry exactly what the StoredEvent messages carry (integers past 2**53
included), the Python client decodes them to equal envelopes and replay
items, an unknown encoding is refused, and a body the rows cannot carry
(stored before the daemon checked bodies; planted here in the LMDB file)
fails as it did before, by name, with every other event still read once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import lmdb
import orjson
import pytest

from tests.support.daemon import Daemon, DaemonStarter
from turnstore import (
    AgentEventEnvelope,
    CaughtUp,
    EventFormatError,
    StoredEvent,
    TurnFinished,
    TurnstoreClient,
)
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

# An encoding number no daemon knows (proto3 enums are open: it parses).
UNKNOWN: Any = 9
BIG = 2**63 + 5  # past 2**53 and past i64: u64 fields must come back exact


def envelopes() -> list[AgentEventEnvelope]:
    return [
        AgentEventEnvelope.new({"type": "text_delta", "delta": "Hel"}),
        AgentEventEnvelope("e-big", BIG, "2026-12-07T00:00:00Z", {"type": "empty"}),
        AgentEventEnvelope.new(
            {"type": "tool_call", "args": {"q": 'ü\u2028"x"', "n": [1, 2.5, None, True]}}
        ),
        AgentEventEnvelope.new({"type": "text_delta", "delta": "lo"}),
    ]


async def fill(client: TurnstoreClient, thread: str) -> list[AgentEventEnvelope]:
    written = envelopes()
    await client.events.append_many(thread, 7, written[:2])
    await client.events.finish_turn(thread, 7)
    await client.events.append_many(thread, BIG, written[2:])
    return written


def rows_of(messages: list[Any]) -> list[list[Any]]:
    return [row for message in messages for row in orjson.loads(message.events_json)]


def stored_rows(messages: list[Any]) -> list[list[Any]]:
    """The StoredEvent messages' events as rows, to compare."""
    return [
        [
            event.position,
            event.turn,
            event.stored_at_unix_nanos,
            event.envelope.event_id,
            event.envelope.sequence,
            event.envelope.timestamp,
            event.envelope.type,
            json.loads(event.envelope.body or b"{}"),
        ]
        for message in messages
        for event in message.events
    ]


@pytest.mark.parametrize("backend", ["lmdb", "postgres"])
async def test_rows_carry_what_stored_events_carry(
    start_daemon: DaemonStarter, backend: str
) -> None:
    daemon = start_daemon(backend)
    async with TurnstoreClient(daemon.target) as client:
        written = await fill(client, "t")
        stub = pb_grpc.EventStoreServiceStub(client._channel)
        for order in (pb.EVENT_ORDER_COMMIT, pb.EVENT_ORDER_TURN):
            plain = [
                m async for m in stub.ReadEvents(pb.ReadEventsRequest(thread_id="t", order=order))
            ]
            rows = [
                m
                async for m in stub.ReadEvents(
                    pb.ReadEventsRequest(
                        thread_id="t", order=order, encoding=pb.EVENT_ENCODING_JSON_ROWS
                    )
                )
            ]
            assert all(not m.events for m in rows)
            assert rows_of(rows) == stored_rows(plain)
            assert len(rows_of(rows)) == 4
        plain_replay = [m async for m in stub.Replay(pb.ReplayRequest(thread_id="t"))]
        rows_replay = [
            m
            async for m in stub.Replay(
                pb.ReplayRequest(thread_id="t", encoding=pb.EVENT_ENCODING_JSON_ROWS)
            )
        ]
        assert rows_of([m for m in rows_replay if m.events_json]) == stored_rows(plain_replay)
        # The markers travel as before.
        assert [list(m.finished_turns) for m in rows_replay] == [
            list(m.finished_turns) for m in plain_replay
        ]
        assert [m.caught_up for m in rows_replay] == [m.caught_up for m in plain_replay]

        # The client's decoded reads: equal envelopes, both ways of replaying.
        assert await client.events.get_events("t") == written
        assert await client.events.get_events_since("t", 3) == written[3:]
        decoded = [item async for item in client.events.replay("t", decode=True)]
        lazy = [item async for item in client.events.replay("t")]
        assert describe(decoded) == describe(lazy)
        assert [i.envelope for i in decoded if isinstance(i, StoredEvent)] == written
        assert all(i.message is None for i in decoded if isinstance(i, StoredEvent))
        assert all(i.message is not None for i in lazy if isinstance(i, StoredEvent))


def describe(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if isinstance(item, StoredEvent):
            out.append((item.position, item.turn, item.stored_at_unix_nanos, item.envelope))
        else:
            out.append(item)
    return out


async def test_an_unknown_encoding_is_refused(daemon: Daemon) -> None:
    async with TurnstoreClient(daemon.target) as client:
        await client.events.append("unknown-encoding", 0, envelopes()[0])
        stub = pb_grpc.EventStoreServiceStub(client._channel)
        for call in (
            stub.ReadEvents(pb.ReadEventsRequest(thread_id="unknown-encoding", encoding=UNKNOWN)),
            stub.Replay(pb.ReplayRequest(thread_id="unknown-encoding", encoding=UNKNOWN)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for _ in call:
                    pass
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "encoding" in (raised.value.details() or "")
        # The daemon is still up and reads as before.
        assert len(await client.events.get_events("unknown-encoding")) == 1


def plant_bad_body(data_dir: Path, marker: bytes) -> None:
    """Break one stored body in place (same length), as an unchecked old write would be."""
    env = lmdb.open(str(data_dir), max_dbs=64, subdir=True)
    try:
        with env.begin(write=True) as txn:
            events = env.open_db(b"events", txn=txn, create=False)
            cursor = txn.cursor(db=events)
            for key, value in cursor:
                if marker in value:
                    broken = value.replace(marker, marker[:-1] + b"]")
                    assert len(broken) == len(value)
                    txn.put(key, broken, db=events)
                    return
        raise AssertionError("no stored body holds the marker")
    finally:
        env.close()


async def test_a_body_the_rows_cannot_carry_fails_by_name_as_before(
    start_daemon: DaemonStarter, tmp_path: Path
) -> None:
    data = tmp_path / "planted"
    daemon = start_daemon("lmdb", data_dir=data)
    async with TurnstoreClient(daemon.target) as client:
        turn0 = [AgentEventEnvelope.new({"type": "d", "delta": f"ok{i}"}) for i in range(3)]
        await client.events.append_many("t", 0, turn0)
        await client.events.finish_turn("t", 0)
        bad = AgentEventEnvelope(
            "bad-one", 0, "2026-12-07T00:00:00Z", {"type": "d", "delta": "BROKEN"}
        )
        await client.events.append_many("t", 1, [bad, *envelopes()[:1]])
        await client.events.finish_turn("t", 1)
    assert daemon.stop() == 0
    plant_bad_body(data, b'"BROKEN"}')
    daemon = start_daemon("lmdb", data_dir=data)
    async with TurnstoreClient(daemon.target) as client:
        with pytest.raises(EventFormatError, match="bad-one"):
            await client.events.get_events("t")
        # A follow-less replay: every event once, in order, each marker once;
        # only the broken event's envelope fails, and by name.
        items = [
            item async for item in client.events.replay("t", max_events_per_message=2, decode=True)
        ]
        assert [i.position for i in items if isinstance(i, StoredEvent)] == [0, 1, 2, 3, 4]
        assert [i.turn for i in items if isinstance(i, TurnFinished)] == [0, 1]
        assert sum(isinstance(i, CaughtUp) for i in items) == 1
        for item in items:
            if isinstance(item, StoredEvent) and item.position == 3:
                with pytest.raises(EventFormatError, match="bad-one"):
                    _ = item.envelope
            elif isinstance(item, StoredEvent):
                assert item.envelope.event["type"] in ("d", "text_delta")
