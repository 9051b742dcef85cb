"""The user-facing scenarios against a turnstore daemon, run inside ``bench.client``.

Every call is the client's public API, as an agent or a UI would make it:
``client.events.append`` / ``finish_turn`` awaited one at a time,
``get_events``, ``replay`` reading each ``.envelope``.

``write_mode`` selects the client's write path: ``"stream"`` (append,
append_many and finish_turn over one shared ``AppendStream`` per client)
or ``"unary"`` (plain unary calls). A client that does not know the
``write_mode`` keyword yet (TypeError) is opened without it, which is
unary, and the result says so (``write_mode_fallback``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

from bench.common import Result
from bench.traits_common import (
    TextDeltas,
    follow_result,
    load_turns,
    many_agents,
    one_agent,
    repeated_reads,
    tag,
)
from turnstore import CaughtUp, StoredEvent, TurnstoreClient

FOLLOW_START_TIMEOUT: Final = 30.0
FOLLOW_END_TIMEOUT: Final = 60.0


def open_client(target: str, write_mode: str | None) -> tuple[TurnstoreClient, Result]:
    """A client in ``write_mode`` (None: the default), and what mode it really got."""
    if write_mode is None:
        return TurnstoreClient(target), {"write_mode": "default", "write_mode_fallback": False}
    options: dict[str, Any] = {"write_mode": write_mode}
    try:
        client = TurnstoreClient(target, **options)
    except TypeError:
        # An older client without the keyword: every write is a unary call.
        info = {"write_mode": "unary", "write_mode_fallback": True, "requested": write_mode}
        return TurnstoreClient(target), info
    return client, {"write_mode": write_mode, "write_mode_fallback": False}


async def agent(
    target: str, write_mode: str, events_per_turn: int, duration: float, warmup: float
) -> Result:
    """One agent: awaited appends, a finish after every ``events_per_turn``."""
    client, info = open_client(target, write_mode)
    async with client:
        thread = f"trait-agent-{tag()}"
        result = await one_agent(
            client.events.append,
            client.events.finish_turn,
            thread,
            events_per_turn,
            duration,
            warmup,
        )
    return {**result, **info}


async def agents(
    target: str, write_mode: str, concurrencies: list[int], duration: float, warmup: float
) -> Result:
    """N agents sharing one client, each on its own thread, each awaiting its appends."""
    client, info = open_client(target, write_mode)
    async with client:
        result = await many_agents(
            client.events.append, f"trait-agents-{tag()}", concurrencies, duration, warmup
        )
    return {**result, **info}


async def agents_split(
    targets: list[str], write_mode: str, concurrency: int, duration: float, warmup: float
) -> Result:
    """:func:`agents` with the agents split evenly over several daemons, a client each.

    Agent i appends through the daemon ``targets[i % len(targets)]``; the
    daemons share one PostgreSQL database. The rate is the total.
    """
    opened = [open_client(target, write_mode) for target in targets]
    async with contextlib.AsyncExitStack() as stack:
        for client, _ in opened:
            await stack.enter_async_context(client)
        result = await many_agents(
            [client.events.append for client, _ in opened],
            f"trait-split-{tag()}",
            [concurrency],
            duration,
            warmup,
        )
    return {**result, **opened[0][1], "daemons": len(targets)}


async def load(target: str, thread: str, events: int, per_turn: int) -> Result:
    """Fill ``thread`` with finished turns of text deltas (setup, over an appender)."""
    started = time.perf_counter()
    factory = TextDeltas()
    async with TurnstoreClient(target) as client:
        async with client.events.appender() as appender:
            for turn, count in load_turns(events, per_turn):
                await appender.submit(thread, turn, factory.batch(count))
                await appender.finish_turn(thread, turn)
            await appender.flush()
        stored = await client.events.event_count(thread)
    elapsed = time.perf_counter() - started
    return {"stored": stored, "elapsed_s": elapsed, "rate_per_s": events / elapsed}


async def read(
    target: str, thread: str, expected: int, how: str, duration: float, min_repeats: int
) -> Result:
    """Decoded reads of the whole thread: ``get_events`` or ``replay`` reading ``.envelope``.

    Every event's ``event`` dict is looked into, so nothing stays undecoded.
    """
    async with TurnstoreClient(target) as client:

        async def get_events() -> int:
            envelopes = await client.events.get_events(thread)
            return sum(1 for envelope in envelopes if envelope.event["type"])

        async def replay() -> int:
            count = 0
            async for item in client.events.replay(thread):
                if isinstance(item, StoredEvent) and item.envelope.event["type"]:
                    count += 1
            return count

        reader = {"get_events": get_events, "replay": replay}[how]
        result = await repeated_reads(reader, expected, duration, min_repeats)
    result["how"] = how
    return result


async def follow(target: str, write_mode: str, events: int) -> Result:
    """A follower (``replay(follow=True)``, decoding each envelope) and a writer, one process.

    The writer awaits each ``append`` in ``write_mode``; latencies run from
    the writer getting the acknowledgement to the follower receiving it.
    """
    client, info = open_client(target, write_mode)
    async with client:
        result = await _follow(client, client, events)
    return {**result, **info}


async def follow_across(
    writer_target: str, follower_target: str, write_mode: str, events: int
) -> Result:
    """:func:`follow` with the writer on one daemon and the follower on another.

    Both daemons serve one PostgreSQL database; the follower's daemon learns
    of the writer's commits from the database (LISTEN/NOTIFY). One process,
    so both ends read the same clock.
    """
    writer, info = open_client(writer_target, write_mode)
    async with writer, TurnstoreClient(follower_target) as reader:
        result = await _follow(writer, reader, events)
    return {**result, **info}


async def _follow(writer: TurnstoreClient, reader: TurnstoreClient, events: int) -> Result:
    """``events`` awaited appends by ``writer`` to a fresh thread that ``reader`` follows."""
    thread = f"trait-follow-{tag()}"
    factory = TextDeltas()
    received: dict[int, float] = {}
    caught_up = asyncio.Event()

    async def follower() -> None:
        async with reader.events.replay(thread, follow=True) as replay:
            async for item in replay:
                if isinstance(item, StoredEvent):
                    if item.envelope.event["type"]:
                        received[item.position] = time.perf_counter()
                    if len(received) >= events:
                        return
                elif isinstance(item, CaughtUp):
                    caught_up.set()

    task = asyncio.create_task(follower())
    await asyncio.wait_for(caught_up.wait(), FOLLOW_START_TIMEOUT)
    sent: dict[int, tuple[float, float]] = {}
    for _ in range(events):
        before = time.perf_counter()
        position = await writer.events.append(thread, 1, factory.make())
        sent[position] = (before, time.perf_counter())
    await asyncio.wait_for(task, FOLLOW_END_TIMEOUT)
    return follow_result(sent, received)


SCENARIOS: Final[dict[str, Callable[..., Coroutine[Any, Any, Result]]]] = {
    "trait-agent": agent,
    "trait-agents": agents,
    "trait-agents-split": agents_split,
    "trait-load": load,
    "trait-read": read,
    "trait-follow": follow,
    "trait-follow-across": follow_across,
}


def run(scenario: str, params: dict[str, Any]) -> Result:
    """Run one scenario in a fresh event loop."""
    return asyncio.run(SCENARIOS[scenario](**params))
