"""The user-facing scenarios against Redis Streams, run inside ``bench.client``.

How a careful Redis user would store an agent's events: one stream per
thread (``thread:<id>``), one entry per event with fields ``turn`` and ``e``
(the flat envelope JSON, encoded with orjson), and a finish as one more
entry ``{turn, finish}`` in the same stream, so a follower sees it in order.
The client is redis-py's asyncio client with the hiredis parser (the result
says whether hiredis was really in use); the server runs with
``appendonly yes`` and ``appendfsync always``, so each reply comes after
the write is fsynced. Reads decode every entry's JSON with orjson: XRANGE in
pages of 1,000 for ``get_events``, XREAD COUNT 1,000 for a replay, XREAD
BLOCK for a live follower.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

import orjson
import redis
import redis.asyncio
import redis.utils

from bench.common import Result
from bench.traits_common import (
    TextDeltas,
    encode,
    follow_result,
    load_turns,
    many_agents,
    one_agent,
    repeated_reads,
    tag,
)
from turnstore import AgentEventEnvelope

HOST: Final = "127.0.0.1"
EVENT: Final = b"e"
FINISH: Final = b"finish"
PAGE: Final = 1000
LOAD_PIPELINE: Final = 1000
FOLLOW_START_TIMEOUT: Final = 30.0
FOLLOW_END_TIMEOUT: Final = 60.0


def stream_key(thread: str) -> str:
    """The stream that holds one thread."""
    return f"thread:{thread}"


def _client(port: int) -> redis.asyncio.Redis:
    return redis.asyncio.Redis(host=HOST, port=port)


def _info() -> Result:
    return {"hiredis": bool(redis.utils.HIREDIS_AVAILABLE), "redis_py": redis.__version__}


class RedisEvents:
    """``append`` and ``finish_turn`` of an EventStore on Redis Streams."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client

    async def append(self, thread: str, turn: int, envelope: AgentEventEnvelope) -> bytes:
        """XADD the envelope; returns its entry id (after the fsync)."""
        fields: Any = {b"turn": turn, EVENT: encode(envelope)}
        entry_id: Any = await self._client.xadd(stream_key(thread), fields)
        return bytes(entry_id)

    async def finish_turn(self, thread: str, turn: int) -> None:
        """XADD the turn's finish marker."""
        fields: Any = {b"turn": turn, FINISH: b"1"}
        await self._client.xadd(stream_key(thread), fields)


async def agent(port: int, events_per_turn: int, duration: float, warmup: float) -> Result:
    """One agent: awaited XADDs, a finish marker after every ``events_per_turn``."""
    client = _client(port)
    try:
        store = RedisEvents(client)
        thread = f"trait-agent-{tag()}"
        result = await one_agent(
            store.append, store.finish_turn, thread, events_per_turn, duration, warmup
        )
    finally:
        await client.aclose()
    return {**result, **_info()}


async def agents(port: int, concurrencies: list[int], duration: float, warmup: float) -> Result:
    """N agents sharing one client (its pool gives each a connection), each on its own stream."""
    client = _client(port)
    try:
        store = RedisEvents(client)
        result = await many_agents(
            store.append, f"trait-agents-{tag()}", concurrencies, duration, warmup
        )
    finally:
        await client.aclose()
    return {**result, **_info()}


def load(port: int, thread: str, events: int, per_turn: int) -> Result:
    """Fill the thread's stream with finished turns, pipelined (setup, not measured)."""
    started = time.perf_counter()
    client = redis.Redis(host=HOST, port=port)
    try:
        factory = TextDeltas()
        key = stream_key(thread)
        batch = client.pipeline(transaction=False)
        for turn, count in load_turns(events, per_turn):
            for envelope in factory.batch(count):
                event: Any = {b"turn": turn, EVENT: encode(envelope)}
                batch.xadd(key, event)
            finish: Any = {b"turn": turn, FINISH: b"1"}
            batch.xadd(key, finish)
            if len(batch) >= LOAD_PIPELINE:
                batch.execute()
        batch.execute()
        entries: Any = client.xrange(key, count=events * 2)
        stored = sum(1 for _, fields in entries if EVENT in fields)
    finally:
        client.close()
    elapsed = time.perf_counter() - started
    return {"stored": stored, "elapsed_s": elapsed, "rate_per_s": events / elapsed}


def _decode_page(entries: Any) -> int:
    """Decode every event entry of a page (finish markers skipped); the events counted."""
    count = 0
    for _, fields in entries:
        raw = fields.get(EVENT)
        if raw is not None and orjson.loads(raw)["type"]:
            count += 1
    return count


async def read(
    port: int, thread: str, expected: int, how: str, duration: float, min_repeats: int
) -> Result:
    """Decoded reads of the whole stream: ``get_events`` (XRANGE) or ``replay`` (XREAD)."""
    client = _client(port)
    key = stream_key(thread)
    try:

        async def get_events() -> int:
            # The list of decoded events a get_events returns, built page by page.
            events: list[Any] = []
            start: bytes | str = "-"
            while True:
                entries: Any = await client.xrange(key, min=start, max="+", count=PAGE)
                events.extend(
                    orjson.loads(fields[EVENT]) for _, fields in entries if EVENT in fields
                )
                if len(entries) < PAGE:
                    break
                start = b"(" + entries[-1][0]
            return sum(1 for event in events if event["type"])

        async def replay() -> int:
            count = 0
            last: bytes | str = "0-0"
            while True:
                answer: Any = await client.xread({key: last}, count=PAGE)
                if not answer:
                    return count
                entries = answer[0][1]
                count += _decode_page(entries)
                last = entries[-1][0]

        reader = {"get_events": get_events, "replay": replay}[how]
        result = await repeated_reads(reader, expected, duration, min_repeats)
    finally:
        await client.aclose()
    return {**result, "how": how, "page": PAGE, **_info()}


async def follow(port: int, events: int) -> Result:
    """A follower on XREAD BLOCK and a writer of awaited XADDs, in one process.

    Each has its own client (connection). Latencies run from the writer's
    XADD reply to the follower decoding the entry.
    """
    writer_client, follower_client = _client(port), _client(port)
    thread = f"trait-follow-{tag()}"
    key = stream_key(thread)
    received: dict[bytes, float] = {}
    ready = asyncio.Event()

    async def follower() -> None:
        last: bytes | str = "0-0"
        while len(received) < events:
            ready.set()
            answer: Any = await follower_client.xread({key: last}, count=PAGE, block=0)
            for entry_id, fields in answer[0][1]:
                if orjson.loads(fields[EVENT])["type"]:
                    received[entry_id] = time.perf_counter()
                last = entry_id

    try:
        task = asyncio.create_task(follower())
        await asyncio.wait_for(ready.wait(), FOLLOW_START_TIMEOUT)
        store = RedisEvents(writer_client)
        factory = TextDeltas()
        sent: dict[bytes, tuple[float, float]] = {}
        for _ in range(events):
            before = time.perf_counter()
            entry_id = await store.append(thread, 1, factory.make())
            sent[entry_id] = (before, time.perf_counter())
        await asyncio.wait_for(task, FOLLOW_END_TIMEOUT)
    finally:
        await writer_client.aclose()
        await follower_client.aclose()
    return {**follow_result(sent, received), **_info()}


SCENARIOS: Final[dict[str, Callable[..., Any]]] = {
    "redis-trait-agent": agent,
    "redis-trait-agents": agents,
    "redis-trait-load": load,
    "redis-trait-read": read,
    "redis-trait-follow": follow,
}


def run(scenario: str, params: dict[str, Any]) -> Result:
    """Run one scenario (coroutines in a fresh event loop)."""
    outcome = SCENARIOS[scenario](**params)
    if isinstance(outcome, Coroutine):
        outcome = asyncio.run(outcome)
    result: Result = outcome
    return result
