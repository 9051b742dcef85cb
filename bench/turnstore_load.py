"""Load generators against a turnstore daemon, run inside ``bench.client``.

Each coroutine takes the daemon's target and its parameters, runs one
scenario with the real async client (or, where it says, the generated stub),
and returns a JSON-compatible result.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import grpc

from bench.common import Deadline, EnvelopeFactory, Result, latency_summary, rate_result
from turnstore import (
    CaughtUp,
    ConversationSnapshot,
    EventAppender,
    StoredEvent,
    TurnstoreClient,
    TurnstoreHistoryStore,
)
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024
CHANNEL_OPTIONS: Final = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]
RAW_EVENTS_PER_MESSAGE: Final = 4096

Call = Callable[[], Awaitable[object]]


def _tag() -> str:
    return uuid.uuid4().hex[:10]


async def _closed_loop(calls: list[Call], seconds: float) -> Result:
    """Run each call in its own loop, one in flight each, for ``seconds``."""
    deadline = Deadline(seconds)
    latencies: list[float] = []

    async def worker(call: Call) -> None:
        while not deadline.passed():
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker(call) for call in calls))
    return rate_result(len(latencies), deadline.elapsed(), latencies)


async def _by_concurrency(
    make_calls: Callable[[int], list[Call]],
    concurrencies: list[int],
    duration: float,
    warmup: float,
) -> Result:
    results: Result = {}
    for concurrency in concurrencies:
        calls = make_calls(concurrency)
        await _closed_loop(calls, warmup)
        results[str(concurrency)] = await _closed_loop(calls, duration)
    return {"by_concurrency": results}


async def noop(target: str, concurrencies: list[int], duration: float, warmup: float) -> Result:
    """``Admin/GetStats`` calls, ``concurrency`` in flight: the cost of a trivial RPC."""
    channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    try:
        stub = pb_grpc.AdminServiceStub(channel)
        request = pb.GetStatsRequest()

        def make_calls(concurrency: int) -> list[Call]:
            return [lambda: stub.GetStats(request) for _ in range(concurrency)]

        return await _by_concurrency(make_calls, concurrencies, duration, warmup)
    finally:
        await channel.close()


async def unary_append(
    target: str, concurrencies: list[int], duration: float, warmup: float
) -> Result:
    """``client.events.append`` of one event, ``concurrency`` in flight, each on its own thread.

    Unary calls (``write_mode="unary"``), as this row has always measured; the
    shared-stream default is in the user-facing table.
    """
    async with TurnstoreClient(target, write_mode="unary") as client:
        tag = _tag()
        factory = EnvelopeFactory()

        def make_calls(concurrency: int) -> list[Call]:
            def call(thread: str) -> Call:
                return lambda: client.events.append(thread, 1, factory.make())

            return [call(f"bench-unary-{tag}-c{concurrency}-w{w}") for w in range(concurrency)]

        result = await _by_concurrency(make_calls, concurrencies, duration, warmup)
        result["event_bytes"] = factory.encoded_bytes
        return result


async def _pump(
    appender: EventAppender,
    thread: str,
    factory: EnvelopeFactory,
    events_per_item: int,
    window: int,
    *,
    seconds: float | None = None,
    total_events: int | None = None,
) -> Result:
    """Submit items, ``window`` unacknowledged at most, for a time or an event count."""
    deadline = Deadline(seconds if seconds is not None else float("inf"))
    pending: collections.deque[tuple[asyncio.Future[list[int]], float]] = collections.deque()
    latencies: list[float] = []
    sent = 0

    async def settle_oldest() -> None:
        future, started = pending.popleft()
        await future
        latencies.append(time.perf_counter() - started)

    while not deadline.passed() and (total_events is None or sent < total_events):
        if len(pending) >= window:
            await settle_oldest()
        count = (
            events_per_item if total_events is None else min(events_per_item, total_events - sent)
        )
        started = time.perf_counter()
        pending.append((await appender.submit(thread, 1, factory.batch(count)), started))
        sent += count
    while pending:
        await settle_oldest()
    result = rate_result(sent, deadline.elapsed())
    result["item_ack"] = latency_summary(latencies)
    result["items"] = len(latencies)
    return result


async def stream_append(
    target: str, events_per_item: int, window: int, duration: float, warmup: float
) -> Result:
    """Pipelined ``appender.submit`` of ``events_per_item`` events, ``window`` items in flight.

    ``rate_per_s`` counts events acknowledged (after their durable commit).
    """
    async with TurnstoreClient(target) as client, client.events.appender() as appender:
        factory = EnvelopeFactory()
        thread = f"bench-stream-{_tag()}"
        await _pump(appender, thread, factory, events_per_item, window, seconds=warmup)
        result = await _pump(appender, thread, factory, events_per_item, window, seconds=duration)
        result.update(events_per_item=events_per_item, window=window)
        return result


async def load_thread(target: str, thread: str, events: int, events_per_item: int) -> Result:
    """Fill ``thread`` with ``events`` events over an appender (setup, not a measurement)."""
    async with TurnstoreClient(target) as client, client.events.appender() as appender:
        result = await _pump(
            appender, thread, EnvelopeFactory(), events_per_item, 8, total_events=events
        )
        result["stored"] = await client.events.event_count(thread)
        return result


async def _stored_event_bytes(target: str, thread: str) -> float:
    """The mean encoded size of a StoredEvent of ``thread``, from its first 64 events."""
    channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    try:
        call = pb_grpc.EventStoreServiceStub(channel).Replay(
            pb.ReplayRequest(thread_id=thread, max_events_per_message=64)
        )
        async for message in call:
            if message.events:
                call.cancel()
                return float(sum(e.ByteSize() for e in message.events) / len(message.events))
        return 0.0
    finally:
        await channel.close()


def _replay_result(count: int, elapsed: float, mean_bytes: float, expected: int) -> Result:
    result = rate_result(count, elapsed)
    result.update(
        stored_event_bytes_mean=mean_bytes,
        mb_per_s=count * mean_bytes / elapsed / 1e6 if elapsed > 0 else 0.0,
        expected=expected,
        complete=count == expected,
    )
    return result


async def replay_client(target: str, thread: str, expected: int, decode: bool = False) -> Result:
    """``client.events.replay(thread)``, not following: every item becomes a Python object.

    The client decodes an event's envelope (its JSON body) only when
    ``.envelope`` is read; with ``decode`` every event's is read.
    """
    mean_bytes = await _stored_event_bytes(target, thread)
    async with TurnstoreClient(target) as client:
        count = 0
        started = time.perf_counter()
        async for item in client.events.replay(thread):
            if isinstance(item, StoredEvent):
                if decode:
                    item.envelope  # noqa: B018 - decoding it is the point
                count += 1
        elapsed = time.perf_counter() - started
    result = _replay_result(count, elapsed, mean_bytes, expected)
    result["decoded"] = decode
    return result


async def replay_raw(target: str, thread: str, expected: int) -> Result:
    """The Replay stream read with the generated stub, counting ``len(message.events)``."""
    mean_bytes = await _stored_event_bytes(target, thread)
    channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    try:
        stub = pb_grpc.EventStoreServiceStub(channel)
        request = pb.ReplayRequest(thread_id=thread, max_events_per_message=RAW_EVENTS_PER_MESSAGE)
        count = messages = 0
        started = time.perf_counter()
        async for message in stub.Replay(request):
            count += len(message.events)
            messages += 1
        elapsed = time.perf_counter() - started
    finally:
        await channel.close()
    result = _replay_result(count, elapsed, mean_bytes, expected)
    result["messages"] = messages
    return result


async def live_tail(target: str, events: int) -> Result:
    """A follower and a writer of single events in one process.

    ``ack_to_follower`` is the time from the writer seeing an append's
    acknowledgement to the follower receiving that event (negative when the
    follower got it first); ``send_to_follower`` starts when the append is sent.
    The writer makes unary calls, as this row has always measured.
    """
    async with TurnstoreClient(target, write_mode="unary") as client:
        thread = f"bench-tail-{_tag()}"
        factory = EnvelopeFactory()
        received: dict[int, float] = {}
        caught_up = asyncio.Event()

        async def follow() -> None:
            async with client.events.replay(thread, follow=True) as replay:
                async for item in replay:
                    if isinstance(item, StoredEvent):
                        received[item.position] = time.perf_counter()
                        if len(received) >= events:
                            return
                    elif isinstance(item, CaughtUp):
                        caught_up.set()

        follower = asyncio.create_task(follow())
        await asyncio.wait_for(caught_up.wait(), 30)
        sent: dict[int, tuple[float, float]] = {}
        started = time.perf_counter()
        for _ in range(events):
            before = time.perf_counter()
            position = await client.events.append(thread, 1, factory.make())
            sent[position] = (before, time.perf_counter())
        await asyncio.wait_for(follower, 60)
        elapsed = time.perf_counter() - started
    ack = [received[p] - acked for p, (_, acked) in sent.items()]
    send = [received[p] - before for p, (before, _) in sent.items()]
    return {
        "events": events,
        "elapsed_s": elapsed,
        "ack_to_follower": latency_summary(ack),
        "send_to_follower": latency_summary(send),
        "follower_first": sum(1 for value in ack if value < 0),
    }


def make_snapshot(size: int) -> ConversationSnapshot:
    """A snapshot of ~1 KB messages whose JSON is ``size`` bytes (at least one message)."""
    per_message = 1000

    def build(count: int, last_extra: int) -> ConversationSnapshot:
        messages: list[Any] = [{"role": "assistant", "content": "x" * per_message}] * (count - 1)
        messages.append({"role": "user", "content": "x" * max(0, per_message + last_extra)})
        return ConversationSnapshot(messages=messages, pinned=[False] * count)

    count = max(1, size // (per_message + 40))
    shortfall = size - len(build(count, 0).to_json().encode())
    return build(count, shortfall)


async def _timed_ops(call: Call, seconds: float, min_ops: int) -> Result:
    deadline = Deadline(seconds)
    latencies: list[float] = []
    while not deadline.passed() or len(latencies) < min_ops:
        started = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - started)
    return rate_result(len(latencies), deadline.elapsed(), latencies)


async def _save_and_load(
    history: TurnstoreHistoryStore, snapshot: ConversationSnapshot, duration: float, min_ops: int
) -> Result:
    save = await _timed_ops(lambda: history.save(snapshot), duration, min_ops)
    load = await _timed_ops(history.load, duration, min_ops)
    json_bytes = len(snapshot.to_json().encode())
    return {
        "json_bytes": json_bytes,
        "save": save,
        "load": load,
        "save_mb_per_s": save["rate_per_s"] * json_bytes / 1e6,
        "load_mb_per_s": load["rate_per_s"] * json_bytes / 1e6,
        "round_trip_ok": await history.load() == snapshot,
    }


async def snapshots(target: str, sizes: list[int], duration: float, min_ops: int) -> Result:
    """``history.save`` then ``history.load`` of one snapshot per size, sequentially."""
    results: Result = {}
    async with TurnstoreClient(target) as client:
        for size in sizes:
            snapshot = make_snapshot(size)
            history = client.history(f"bench-snapshot-{size}-{_tag()}")
            results[str(size)] = await _save_and_load(history, snapshot, duration, min_ops)
    return {"by_size": results}


SCENARIOS: Final[dict[str, Callable[..., Coroutine[Any, Any, Result]]]] = {
    "noop": noop,
    "unary-append": unary_append,
    "stream-append": stream_append,
    "load-thread": load_thread,
    "replay-client": replay_client,
    "replay-raw": replay_raw,
    "live-tail": live_tail,
    "snapshots": snapshots,
}


def run(scenario: str, params: dict[str, Any]) -> Result:
    """Run one scenario in a fresh event loop."""
    return asyncio.run(SCENARIOS[scenario](**params))
