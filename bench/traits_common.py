"""What the user-facing ("trait") scenarios share, whichever store they drive.

The trait table measures the calls an agent or a UI makes, one awaited call
at a time, on every side: turnstore (both client write modes), Redis Streams
and in-process SQLite. Each side plugs its own ``append``, ``finish`` and
``read`` coroutines into the same loops here, so the loops, the payload and
the statistics cannot differ between sides.

The payload is a thread of text deltas whose flat envelope JSON (what Redis
and SQLite store, and what turnstore's client sends as typed header fields
plus the body) is :data:`DELTA_JSON_BYTES` long.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson

from bench.common import Deadline, Result, latency_summary, rate_result
from turnstore import AgentEventEnvelope

DELTA_JSON_BYTES: Final = 200
TIMESTAMP: Final = "2026-01-01T00:00:00.000000Z"
TEXT: Final = "The quick brown fox jumps over the lazy dog while the agent keeps streaming. "

Append = Callable[[str, int, AgentEventEnvelope], Awaitable[object]]
Finish = Callable[[str, int], Awaitable[object]]
# Reads a whole thread, touching every event's decoded dict; returns the count.
Read = Callable[[], Awaitable[int]]


def tag() -> str:
    """A short random tag that keeps this run's thread ids apart from earlier ones."""
    return uuid.uuid4().hex[:10]


class TextDeltas:
    """Makes ``text_delta`` envelopes whose flat JSON is about 200 bytes.

    Event ids are UUID v4 strings, as the agent runtime mints them; the
    timestamp is fixed and ``sequence`` counts 0..99 so that sizes stay
    within a byte or two of :data:`DELTA_JSON_BYTES`.
    """

    def __init__(self, size: int = DELTA_JSON_BYTES) -> None:
        probe = AgentEventEnvelope(str(uuid.uuid4()), 10, TIMESTAMP, self._event(""))
        pad = max(0, size - len(encode(probe)))
        self._delta = (TEXT * (pad // len(TEXT) + 1))[:pad]
        self._counter = 0

    @staticmethod
    def _event(delta: str) -> dict[str, Any]:
        return {"type": "text_delta", "message_id": "msg-1", "delta": delta}

    def make(self) -> AgentEventEnvelope:
        """The next envelope (a fresh event id)."""
        sequence = self._counter % 100
        self._counter += 1
        return AgentEventEnvelope(str(uuid.uuid4()), sequence, TIMESTAMP, self._event(self._delta))

    def batch(self, count: int) -> list[AgentEventEnvelope]:
        """The next ``count`` envelopes."""
        return [self.make() for _ in range(count)]


def encode(envelope: AgentEventEnvelope) -> bytes:
    """The flat envelope JSON, with orjson: what the Redis and SQLite sides store."""
    return orjson.dumps(envelope.to_json_dict())


async def one_agent(
    append: Append,
    finish: Finish,
    thread: str,
    events_per_turn: int,
    seconds: float,
    warmup: float,
) -> Result:
    """One agent: turns of ``events_per_turn`` awaited appends, each closed by a finish.

    ``append`` and ``finish`` latencies are kept apart; a turn in progress
    when the time is up is still finished (and measured), so every turn the
    loop opened is closed.
    """

    async def run(duration: float, first_turn: int) -> tuple[list[float], list[float], int]:
        deadline = Deadline(duration)
        appends: list[float] = []
        finishes: list[float] = []
        turn = first_turn
        factory = TextDeltas()
        while not deadline.passed():
            for _ in range(events_per_turn):
                started = time.perf_counter()
                await append(thread, turn, factory.make())
                appends.append(time.perf_counter() - started)
                if deadline.passed():
                    break
            started = time.perf_counter()
            await finish(thread, turn)
            finishes.append(time.perf_counter() - started)
            turn += 1
        return appends, finishes, turn

    _, _, next_turn = await run(warmup, 1)
    started = time.perf_counter()
    appends, finishes, last = await run(seconds, next_turn)
    elapsed = time.perf_counter() - started
    return {
        "append": rate_result(len(appends), elapsed, appends),
        "finish": latency_summary(finishes),
        "turns": last - next_turn,
        "events_per_turn": events_per_turn,
    }


async def closed_loop(appends: list[Callable[[], Awaitable[object]]], seconds: float) -> Result:
    """Each call in its own task, one in flight each, for ``seconds``: the agents' rate."""
    deadline = Deadline(seconds)
    latencies: list[float] = []

    async def agent(call: Callable[[], Awaitable[object]]) -> None:
        while not deadline.passed():
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(agent(call) for call in appends))
    return rate_result(len(latencies), deadline.elapsed(), latencies)


async def many_agents(
    append: Append | list[Append],
    prefix: str,
    concurrencies: list[int],
    seconds: float,
    warmup: float,
) -> Result:
    """N agents at once, each appending to its own thread and awaiting each append.

    Each concurrency gets fresh threads (``prefix``-c{N}-a{i}) and a warm-up
    (its appends are ``warmup_count``, beside the measured ``count``).
    With a list of ``append``s (one per server), agent i uses the
    ``i % len``-th: the agents are split evenly over the servers.
    """
    appends = append if isinstance(append, list) else [append]
    results: Result = {}
    for concurrency in concurrencies:
        factory = TextDeltas()

        def agent_call(
            append: Append, thread: str, factory: TextDeltas
        ) -> Callable[[], Awaitable[object]]:
            return lambda: append(thread, 1, factory.make())

        calls = [
            agent_call(appends[i % len(appends)], f"{prefix}-c{concurrency}-a{i}", factory)
            for i in range(concurrency)
        ]
        warm = await closed_loop(calls, warmup)
        results[str(concurrency)] = {
            **await closed_loop(calls, seconds),
            "warmup_count": warm["count"],
        }
    return {"by_concurrency": results, "thread_prefix": prefix}


async def repeated_reads(read: Read, expected: int, seconds: float, min_repeats: int) -> Result:
    """Read the whole thread again and again (after one unmeasured read) for ``seconds``.

    ``rate_per_s`` is the median rate over the repeats, ``best_rate_per_s``
    the fastest; ``complete`` says every repeat saw ``expected`` events.
    """
    counts = [await read()]
    rates: list[float] = []
    deadline = Deadline(seconds)
    while not deadline.passed() or len(rates) < min_repeats:
        started = time.perf_counter()
        counts.append(await read())
        elapsed = time.perf_counter() - started
        rates.append(counts[-1] / elapsed if elapsed > 0 else 0.0)
    return {
        "rate_per_s": statistics.median(rates),
        "best_rate_per_s": max(rates),
        "repeats": len(rates),
        "expected": expected,
        "complete": all(count == expected for count in counts),
    }


def follow_result(sent: dict[Any, tuple[float, float]], received: dict[Any, float]) -> Result:
    """Latencies from each append's acknowledgement (and its sending) to the follower.

    ``sent`` maps an event's key to (sent, acknowledged) times; ``received``
    the same key to the time the follower got it. Negative values (the
    follower got the event before the writer got its acknowledgement) count
    as they are; ``follower_first`` says how many.
    """
    ack = [received[key] - acked for key, (_, acked) in sent.items() if key in received]
    send = [received[key] - before for key, (before, _) in sent.items() if key in received]
    return {
        "events": len(sent),
        "received": sum(1 for key in sent if key in received),
        "ack_to_follower": latency_summary(ack),
        "send_to_follower": latency_summary(send),
        "follower_first": sum(1 for value in ack if value < 0),
    }


def load_turns(total: int, per_turn: int) -> list[tuple[int, int]]:
    """(turn, events) pairs that fill a thread of ``total`` events, turns from 1."""
    return [
        (1 + first // per_turn, min(per_turn, total - first)) for first in range(0, total, per_turn)
    ]
