"""Concurrent calls on one thread, against the real daemon.

Every coordination point is a count of acknowledged calls (an asyncio.Event
set by the call that reaches it), never a sleep: the races themselves come
from many calls in flight at once, which the daemon's group commit batches
into shared transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

import grpc
import pytest

from tests.support.daemon import Daemon
from turnstore import (
    AgentEventEnvelope,
    StoredEvent,
    ThreadClearedError,
    TurnAlreadyFinishedError,
    TurnFinishedError,
    TurnstoreClient,
)
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

CLIENTS: Final = 4


def event(writer: int, n: int, pad: int = 0) -> AgentEventEnvelope:
    return AgentEventEnvelope.new(
        {"type": "text_delta", "delta": f"{writer}/{n}", "pad": "p" * pad}, sequence=n
    )


@contextlib.asynccontextmanager
async def clients(daemon: Daemon, count: int = CLIENTS) -> AsyncIterator[list[TurnstoreClient]]:
    """Several clients (several channels), so calls also race across connections."""
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(TurnstoreClient(daemon.target)) for _ in range(count)
        ]


async def read_all(client: TurnstoreClient, thread_id: str) -> list[StoredEvent]:
    """Every event of the thread, checked against event_count and for gaps."""
    stored = [e async for e in client.events.read_events(thread_id, 0)]
    assert await client.events.event_count(thread_id) == len(stored)
    assert [e.position for e in stored] == list(range(len(stored)))
    return stored


# -- (a) many writers, one turn ----------------------------------------------

WRITERS: Final = 16
APPENDS_EACH: Final = 50


async def test_concurrent_appends_to_one_turn_get_unique_gap_free_positions(
    daemon: Daemon, thread_id: str
) -> None:
    async def writer(
        number: int, client: TurnstoreClient
    ) -> list[tuple[list[int], list[AgentEventEnvelope]]]:
        # Odd writers append pairs atomically, even ones single events.
        done = []
        for n in range(APPENDS_EACH):
            if number % 2:
                batch = [event(number, 2 * n), event(number, 2 * n + 1)]
                positions = await client.events.append_many(thread_id, 1, batch)
            else:
                batch = [event(number, n)]
                positions = [await client.events.append(thread_id, 1, batch[0])]
            done.append((positions, batch))
        return done

    async with clients(daemon) as connected:
        results = await asyncio.gather(*(writer(n, connected[n % CLIENTS]) for n in range(WRITERS)))
        client = connected[0]
        stored = await read_all(client, thread_id)
        turn = await client.events.get_turn(thread_id, 1)

    total = sum(len(batch) for result in results for _, batch in result)
    assert total == WRITERS // 2 * APPENDS_EACH * 3
    acknowledged = sorted(p for result in results for positions, _ in result for p in positions)
    assert acknowledged == list(range(total))
    assert len(stored) == total
    for result in results:
        # One writer's sequential calls got increasing positions...
        mine = [p for positions, _ in result for p in positions]
        assert mine == sorted(mine)
        for positions, batch in result:
            # ...each batch consecutive ones, and each event is where it was acknowledged.
            assert positions == list(range(positions[0], positions[0] + len(batch)))
            for position, envelope in zip(positions, batch, strict=True):
                assert stored[position].envelope == envelope
                assert stored[position].turn == 1
    # One turn: its append order is the commit order.
    assert turn is not None and not turn.finished
    assert turn.events == [e.envelope for e in stored]


# -- (b) a finish racing with appends ------------------------------------------


@dataclass
class FinishRace:
    acked: list[tuple[int, AgentEventEnvelope]] = field(default_factory=list)
    refused: list[AgentEventEnvelope] = field(default_factory=list)
    finish_now: asyncio.Event = field(default_factory=asyncio.Event)


# (acknowledged appends before the finish is sent, appenders)
FINISH_RACES: Final = [(1, 8), (10, 8), (40, 12), (100, 16), (5, 24), (60, 4)]
# An appender gives up after this many acknowledged appends: the finish never took.
MAX_APPENDS: Final = 2000


async def finish_race(
    connected: list[TurnstoreClient],
    raw: pb_grpc.EventStoreServiceStub,
    finish_after: int,
    appenders: int,
) -> None:
    """Appenders append to one turn until refused; the finish goes out mid-stream."""
    thread_id = f"finish-race-{uuid.uuid4()}"
    race = FinishRace()

    async def appender(number: int, client: TurnstoreClient) -> None:
        for n in range(MAX_APPENDS):
            # Every third appender sends atomic batches of three.
            size = 3 if number % 3 == 0 else 1
            batch = [event(number, size * n + k) for k in range(size)]
            try:
                positions = await client.events.append_many(thread_id, 7, batch)
            except TurnFinishedError:
                race.refused.extend(batch)
                return
            race.acked.extend(zip(positions, batch, strict=True))
            if len(race.acked) >= finish_after:
                race.finish_now.set()
        raise AssertionError(f"{MAX_APPENDS} appends and none refused: no finish")

    async def finisher() -> int:
        await race.finish_now.wait()
        response = await raw.FinishTurn(pb.FinishTurnRequest(thread_id=thread_id, turn=7))
        return int(response.event_count)

    finish_count, *_ = await asyncio.gather(
        finisher(), *(appender(n, connected[n % CLIENTS]) for n in range(appenders))
    )

    client = connected[0]
    stored = await read_all(client, thread_id)
    turn = await client.events.get_turn(thread_id, 7)
    assert turn is not None and turn.finished
    # Every appender ran until refused, so the finish raced them all.
    assert len(race.refused) >= appenders
    # Exactly the acknowledged events are stored, where acknowledged.
    assert finish_count == len(race.acked) == len(stored)
    assert sorted(p for p, _ in race.acked) == list(range(len(stored)))
    for position, envelope in race.acked:
        assert stored[position].envelope == envelope
    assert turn.events == [e.envelope for e in stored]
    stored_ids = {e.envelope.event_id for e in stored}
    assert not stored_ids & {e.event_id for e in race.refused}
    # The barrier holds afterwards too.
    with pytest.raises(TurnFinishedError):
        await client.events.append(thread_id, 7, event(-1, 0))
    with pytest.raises(TurnAlreadyFinishedError):
        await client.events.finish_turn(thread_id, 7)
    assert await client.events.event_count(thread_id) == len(stored)


async def test_appends_racing_a_finish_are_stored_or_refused_never_both(daemon: Daemon) -> None:
    async with (
        clients(daemon) as connected,
        grpc.aio.insecure_channel(daemon.target) as channel,
    ):
        raw = pb_grpc.EventStoreServiceStub(channel)
        for finish_after, appenders in FINISH_RACES:
            await finish_race(connected, raw, finish_after, appenders)


# -- (c) a clear racing with appends and readers --------------------------------


@dataclass
class ClearRace:
    """A logical clock orders what happened; appends and clears note their ticks."""

    clock: int = 0
    # (issued tick, answered tick, positions, envelopes)
    appends: list[tuple[int, int, list[int], list[AgentEventEnvelope]]] = field(
        default_factory=list
    )
    clears: list[tuple[int, int]] = field(default_factory=list)
    # (issued tick, answered tick, the count answered)
    counts: list[tuple[int, int, int]] = field(default_factory=list)
    sent_ids: set[str] = field(default_factory=set)
    acked_since_clear: int = 0
    clear_now: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    reads: int = 0
    aborted_reads: int = 0

    def tick(self) -> int:
        self.clock += 1
        return self.clock


CLEARS: Final = 5
# Acknowledged events between clears: enough for streams of several messages.
EVENTS_BETWEEN_CLEARS: Final = 1200
BATCH: Final = 25
APPENDERS: Final = 4
READERS: Final = 3


async def test_clear_racing_appends_and_readers_leaves_a_consistent_thread(
    daemon: Daemon, thread_id: str
) -> None:
    race = ClearRace()
    rng = random.Random(7)

    async def appender(number: int, client: TurnstoreClient) -> None:
        n = 0
        while not race.stop.is_set():
            batch = [event(number, n + k, pad=200) for k in range(BATCH)]
            n += BATCH
            race.sent_ids.update(e.event_id for e in batch)
            issued = race.tick()
            positions = await client.events.append_many(thread_id, rng.randint(1, 3), batch)
            race.appends.append((issued, race.tick(), positions, batch))
            race.acked_since_clear += len(batch)
            if race.acked_since_clear >= EVENTS_BETWEEN_CLEARS:
                race.clear_now.set()
            if len(race.clears) == CLEARS and race.acked_since_clear >= EVENTS_BETWEEN_CLEARS:
                race.stop.set()

    async def clearer(client: TurnstoreClient) -> None:
        for _ in range(CLEARS):
            await race.clear_now.wait()
            race.clear_now.clear()
            issued = race.tick()
            race.acked_since_clear = 0
            await client.events.clear(thread_id)
            race.clears.append((issued, race.tick()))

    async def reader(number: int, client: TurnstoreClient) -> None:
        store = client.events
        while not race.stop.is_set():
            race.reads += 1
            kind = race.reads % 5
            try:
                if kind == 0:
                    stored = [e async for e in store.read_events(thread_id, 0)]
                    # A stream that was not aborted is one consistent view.
                    assert [e.position for e in stored] == list(range(len(stored)))
                elif kind == 1:
                    by_turn = [e async for e in store.read_events(thread_id, 0, order="turn")]
                    assert sorted(e.position for e in by_turn) == list(range(len(by_turn)))
                    assert [e.turn for e in by_turn] == sorted(e.turn for e in by_turn)
                elif kind == 2:
                    turns = await store.get_turns(thread_id)
                    numbers = [t.turn for t in turns]
                    assert numbers == sorted(set(numbers))
                    ids = {e.event_id for t in turns for e in t.events}
                    assert ids <= race.sent_ids
                elif kind == 3:
                    issued = race.tick()
                    count = await store.event_count(thread_id)
                    race.counts.append((issued, race.tick(), count))
                else:
                    got = await store.get_turn(thread_id, 1 + number % 3)
                    assert got is None or {e.event_id for e in got.events} <= race.sent_ids
            except ThreadClearedError:
                # Documented: a streaming read the clear cut through.
                assert kind in (0, 1, 2)
                race.aborted_reads += 1

    async with clients(daemon) as connected:
        await asyncio.gather(
            clearer(connected[0]),
            *(appender(n, connected[n % CLIENTS]) for n in range(APPENDERS)),
            *(reader(n, connected[(n + 1) % CLIENTS]) for n in range(READERS)),
        )
        client = connected[0]
        stored = await read_all(client, thread_id)
        turns = await client.events.get_turns(thread_id)

    assert len(race.clears) == CLEARS
    last_issued, last_answered = race.clears[-1]
    by_id = {e.envelope.event_id: e for e in stored}
    assert set(by_id) <= race.sent_ids
    for issued, answered, positions, batch in race.appends:
        present = [by_id[e.event_id] for e in batch if e.event_id in by_id]
        if issued > last_answered:
            # Sent after the last clear finished: must be there.
            assert len(present) == len(batch)
        if answered < last_issued:
            # Acknowledged before the last clear was sent: must be gone.
            assert not present
        if present:
            # Stored means committed after the last clear: whole, where acknowledged.
            assert [e.position for e in present] == positions
            assert [e.envelope for e in present] == batch
    assert sum(len(t.events) for t in turns) == len(stored)
    for t in turns:
        assert t.events == [e.envelope for e in stored if e.turn == t.turn]
    assert race.reads > 0
    assert race.counts
    for issued, answered, count in race.counts:
        assert count_bounds(race, issued, answered)[0] <= count, (issued, answered, count)
        assert count <= count_bounds(race, issued, answered)[1], (issued, answered, count)


def count_bounds(race: ClearRace, issued: int, answered: int) -> tuple[int, int]:
    """What an event_count issued and answered at these ticks may say: (least, most).

    The last clear answered before the count was issued had committed
    before the count read. At least: the events of the appends issued after
    that clear answered and answered before the count was issued, unless
    another clear was in flight during the count (then 0). At most: the
    events of every append issued before the count answered, but those
    acknowledged before that last clear was sent (it removed them).
    """
    done = [clear for clear in race.clears if clear[1] < issued]
    cleared_issued, cleared_answered = done[-1] if done else (0, 0)
    in_flight = any(
        c_issued < answered and c_answered > issued for c_issued, c_answered in race.clears
    )
    least = 0
    if not in_flight:
        least = sum(
            len(batch)
            for a_issued, a_answered, _, batch in race.appends
            if a_issued > cleared_answered and a_answered < issued
        )
    most = sum(
        len(batch)
        for a_issued, a_answered, _, batch in race.appends
        if a_issued < answered and a_answered > cleared_issued
    )
    return least, most


async def test_a_clear_aborts_a_streaming_read_in_progress(daemon: Daemon, thread_id: str) -> None:
    # About 24 MB: far more than the flow-control windows let the daemon send
    # ahead, so it is still reading the thread when the clear commits.
    events = 12_000
    async with (
        TurnstoreClient(daemon.target) as client,
        grpc.aio.insecure_channel(
            daemon.target, options=[("grpc.max_receive_message_length", 64 << 20)]
        ) as channel,
    ):
        for start in range(0, events, 1000):
            await client.events.append_many(
                thread_id, 1 + start // 4000, [event(0, start + k, pad=2000) for k in range(1000)]
            )

        stream = client.events.read_events(thread_id, 0)
        first = await anext(stream)
        assert first.position == 0
        await client.events.clear(thread_id)
        received = 1
        with pytest.raises(ThreadClearedError):
            async for _ in stream:
                received += 1
        assert received < events

        for start in range(0, events, 1000):
            await client.events.append_many(
                thread_id, 1 + start // 4000, [event(0, start + k, pad=2000) for k in range(1000)]
            )
        call = pb_grpc.EventStoreServiceStub(channel).ListTurns(
            pb.ListTurnsRequest(thread_id=thread_id)
        )
        pieces = call.__aiter__()
        piece = await anext(pieces)
        assert piece.turn.turn == 1
        await client.events.clear(thread_id)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in pieces:
                pass
        assert raised.value.code() == grpc.StatusCode.ABORTED
        assert ("turnstore-error", "thread_cleared") in tuple(
            raised.value.trailing_metadata() or ()
        )
        # The cleared thread is empty and takes positions from 0 again.
        assert await client.events.event_count(thread_id) == 0
        assert await client.events.append(thread_id, 1, event(0, 0)) == 0
