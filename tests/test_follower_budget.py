"""Stalled followers stay within the daemon's follower budget (issue 10).

100 followers ask for 4,096 events per message and never read while 20,000
events of about 1 KB are appended. Before the budget the daemon grew by about
12 MB per follower (a 4 MB message and its copies each); now each follower's
message is cut at ``--follower-budget`` and, once all of them together would
hold more than ``--followers-total-budget``, the ones waiting longest are
ended with ``follower_too_slow`` and resume where they stopped.

The tests that start a daemon run on both backends (``backend_args``): a
daemon of their own on a fresh data directory, or on a fresh database of the
session's PostgreSQL server, with the same flags.
"""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest

from tests.support.daemon import DaemonStarter
from tests.support.eventually import eventually_async
from turnstore import (
    AgentEventEnvelope,
    CaughtUp,
    FollowerTooSlowError,
    Replay,
    StoredEvent,
    TurnstoreClient,
)
from turnstore.server.replay.followers import SendBudget, Sender, SendLimits
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

FOLLOWERS = 100
EVENTS = 20_000
EVENTS_PER_APPEND = 500
PER_FOLLOWER = 64 * 1024
TOTAL = 2 * 1024 * 1024
# The stated bound: a stalled follower costs the daemon at most four times
# its budget (measured: about 2.3x plus 80 KB, that is 3.5x at 64 KiB: its
# message as Python bytes while live and gRPC's copy until the reader
# reads, and gRPC's per-stream state), whatever it asked for; SLACK covers
# the rest of the daemon moving meanwhile. Measured: 26-27 MB of growth
# against this bound of 43 MB; before the budget it was 1.5 GB. On PostgreSQL
# 21 MB (54 MB while a replay step fetched every row its range allowed).
SLACK = 16 * 1024 * 1024
BOUND = FOLLOWERS * 4 * PER_FOLLOWER + SLACK
# At most this many followers hold a message at once; all others get ended.
MOST_HOLDING = TOTAL // PER_FOLLOWER
# A message may pass its budget by its last event (and its own fields).
OVERSHOOT = 2048
HELD_BOUND = TOTAL + MOST_HOLDING * OVERSHOOT
# Verify this many ended followers' resumption event by event.
RESUMED_CHECKED = 5


def rss_anon(pid: int) -> int:
    """The daemon's anonymous resident memory in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc status")


def scrape(address: str) -> dict[str, float]:
    """The daemon's Prometheus gauges, by name."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def live_followers(client: TurnstoreClient, count: int) -> bool:
    """Whether the daemon has at least ``count`` followers registered."""
    return (await client.admin.stats()).live_followers >= count


async def read_until_ended(replay: Replay) -> tuple[list[int], bool]:
    """Positions the replay yields until it has them all or is ended as too slow."""
    seen: list[int] = []
    try:
        async for item in replay:
            if isinstance(item, StoredEvent):
                seen.append(item.position)
                if len(seen) == EVENTS:
                    return seen, False
    except FollowerTooSlowError:
        return seen, True
    raise AssertionError(f"the follower ended by itself after {len(seen)} events")


async def resume(client: TurnstoreClient, thread: str, ended: Replay) -> list[int]:
    """The positions after an ended replay's cursor, up to the end of the thread.

    A slow machine may make the resumed replay too slow in turn: it resumes
    again from its own cursor, as any reader would.
    """
    seen: list[int] = []
    cursor = ended
    for _ in range(10):
        again = client.events.replay(thread, after=cursor.last_position, epoch=cursor.epoch)
        try:
            async with again:
                async for item in again:
                    if isinstance(item, StoredEvent):
                        seen.append(item.position)
                    assert not isinstance(item, CaughtUp) or item.next_position == EVENTS
            return seen
        except FollowerTooSlowError:
            cursor = again
    raise AssertionError("the resumed replay was ended as too slow ten times")


async def test_stalled_followers_stay_within_the_budget_and_the_ended_resume(
    tmp_path: Path, backend_args: list[str], start_daemon: DaemonStarter
) -> None:
    daemon = start_daemon(
        "lmdb",
        "--follower-budget",
        str(PER_FOLLOWER),
        "--followers-total-budget",
        str(TOTAL),
        "--metrics-listen",
        "127.0.0.1:0",
        *backend_args,
        data_dir=tmp_path / "data",
        start=False,
    )
    metrics_address = daemon.start()["metrics"]
    assert daemon.process is not None
    pid = daemon.process.pid
    thread = f"thread-{uuid.uuid4()}"
    async with TurnstoreClient(daemon.target) as client:
        replays = [
            client.events.replay(thread, follow=True, max_events_per_message=4096)
            for _ in range(FOLLOWERS)
        ]
        try:
            await eventually_async(
                lambda: live_followers(client, FOLLOWERS), what="the followers to start"
            )
            baseline = peak = rss_anon(pid)

            body = "x" * 1000
            for turn in range(1, EVENTS // EVENTS_PER_APPEND + 1):
                batch = [
                    AgentEventEnvelope.new({"type": "text_delta", "delta": body})
                    for _ in range(EVENTS_PER_APPEND)
                ]
                await client.events.append_many(thread, turn, batch)
                peak = max(peak, rss_anon(pid))

            # Every follower stalls once the client's flow-control windows
            # are full; then at most MOST_HOLDING of them can hold a message.
            held_seen: list[float] = []

            def stalled_and_ended() -> bool:
                nonlocal peak
                peak = max(peak, rss_anon(pid))
                gauges = scrape(metrics_address)
                held_seen.append(gauges["turnstore_follower_held_bytes"])
                ended = gauges["turnstore_followers_ended_too_slow"]
                return ended >= FOLLOWERS - MOST_HOLDING

            await eventually_async(
                lambda: asyncio.to_thread(stalled_and_ended),
                60,
                what="the budget to end the slowest followers",
            )
            assert max(held_seen) <= HELD_BOUND
            stats = await client.admin.stats()
            assert stats.followers_ended_too_slow >= FOLLOWERS - MOST_HOLDING
            assert stats.follower_held_bytes <= HELD_BOUND
            grown = peak - baseline
            assert grown <= BOUND, f"the daemon grew by {grown} bytes, over {BOUND}"

            # Ended followers get every message sent before their status;
            # resuming after their last position gives each event once.
            resumed = 0
            for replay in replays:
                seen, ended = await read_until_ended(replay)
                if ended:
                    assert replay.last_position == (seen[-1] if seen else None)
                    seen += await resume(client, thread, replay)
                    resumed += 1
                assert seen == list(range(EVENTS))
                if resumed == RESUMED_CHECKED:
                    break
            assert resumed == RESUMED_CHECKED
        finally:
            for replay in replays:
                await replay.aclose()
    assert daemon.stop() == 0, daemon.log_lines


async def test_a_message_stops_at_the_follower_budget_whatever_was_asked(
    tmp_path: Path, backend_args: list[str], start_daemon: DaemonStarter
) -> None:
    budget = 16 * 1024
    daemon = start_daemon(
        "lmdb", "--follower-budget", "16KiB", *backend_args, data_dir=tmp_path / "data"
    )
    thread = f"thread-{uuid.uuid4()}"
    try:
        async with TurnstoreClient(daemon.target) as client:
            body = "y" * 1000
            batch = [
                AgentEventEnvelope.new({"type": "text_delta", "delta": body}) for _ in range(300)
            ]
            await client.events.append_many(thread, 1, batch)
            async with grpc.aio.insecure_channel(daemon.target) as channel:
                stub = pb_grpc.EventStoreServiceStub(channel)
                request = pb.ReplayRequest(thread_id=thread, max_events_per_message=4096)
                messages = [message async for message in stub.Replay(request)]
            sizes = [message.ByteSize() for message in messages]
            largest_event = max(event.ByteSize() for m in messages for event in m.events)
            assert max(sizes) <= budget + largest_event + 64, sizes
            assert max(len(message.events) for message in messages) < 300
            positions = [event.position for message in messages for event in message.events]
            assert positions == list(range(300))
    finally:
        assert daemon.stop() == 0, daemon.log_lines


async def test_healthy_followers_contending_for_a_small_total_wait_and_are_never_ended(
    tmp_path: Path, backend_args: list[str], start_daemon: DaemonStarter
) -> None:
    # Ten followers that read promptly share room for four messages: they
    # take turns, and none has a message unread for the second that would
    # make it too slow.
    daemon = start_daemon(
        "lmdb",
        "--follower-budget",
        "64KiB",
        "--followers-total-budget",
        "256KiB",
        *backend_args,
        data_dir=tmp_path / "data",
    )
    thread = f"thread-{uuid.uuid4()}"
    events = 2000
    try:
        async with TurnstoreClient(daemon.target) as client:

            async def follow() -> list[int]:
                seen: list[int] = []
                async with client.events.replay(
                    thread, follow=True, max_events_per_message=4096
                ) as replay:
                    async for item in replay:
                        if isinstance(item, StoredEvent):
                            seen.append(item.position)
                            if len(seen) == events:
                                return seen
                raise AssertionError("the follower ended by itself")

            followers = [asyncio.ensure_future(follow()) for _ in range(10)]
            await eventually_async(
                lambda: live_followers(client, len(followers)), what="the followers to start"
            )
            body = "z" * 1000
            for turn in range(1, events // EVENTS_PER_APPEND + 1):
                batch = [
                    AgentEventEnvelope.new({"type": "text_delta", "delta": body})
                    for _ in range(EVENTS_PER_APPEND)
                ]
                await client.events.append_many(thread, turn, batch)
            received = await asyncio.wait_for(asyncio.gather(*followers), 60)
            assert all(seen == list(range(events)) for seen in received)
            assert (await client.admin.stats()).followers_ended_too_slow == 0
    finally:
        assert daemon.stop() == 0, daemon.log_lines


async def test_the_budget_waits_for_room_and_ends_only_followers_too_slow() -> None:
    now = [0.0]
    limits = SendLimits(message_bytes=100, total_bytes=250, slow_after_seconds=1.0)
    budget = SendBudget(limits, clock=lambda: now[0])
    ended: list[str] = []

    def ender(name: str) -> Sender:
        return Sender(lambda sender: ended.append(name))

    first, second, third, fourth = ender("a"), ender("b"), ender("c"), ender("d")
    await budget.reserve(first)
    budget.hold(first, 100)
    now[0] = 0.5
    await budget.reserve(second)
    budget.hold(second, 90)
    assert budget.held_bytes == 190
    # No room for a third budget, and nobody has waited a second: it waits.
    waiting = asyncio.ensure_future(budget.reserve(third))
    await asyncio.sleep(0)  # let it run up to its wait
    assert not waiting.done()
    budget.release(second)
    budget.release(second)  # idempotent
    await asyncio.wait_for(waiting, 30)
    assert ended == [] and budget.held_bytes == 200
    # Once the first has waited a second, a reservation that does not fit
    # ends it (never the reserving one, nor one still reading: the third).
    now[0] = 1.0
    await budget.reserve(fourth)
    assert ended == ["a"] and first.was_ended and not third.was_ended
    assert budget.held_bytes == 200 and budget.ending_bytes == 100
    assert budget.ended_too_slow == 1
    budget.ended(first)
    budget.ended(first)  # idempotent
    assert budget.ending_bytes == 0
    # A message may overshoot its reservation by its last event.
    budget.hold(fourth, 130)
    assert budget.held_bytes == 230


def test_send_limits_refuse_a_total_below_one_follower_and_oversized_messages() -> None:
    with pytest.raises(ValueError, match="at least one follower"):
        SendLimits(message_bytes=1024, total_bytes=1000)
    with pytest.raises(ValueError, match="between 1 byte and 4 MiB"):
        SendLimits(message_bytes=8 * 1024 * 1024, total_bytes=64 * 1024 * 1024)
    with pytest.raises(ValueError, match="between 1 byte and 4 MiB"):
        SendLimits(message_bytes=0)
    with pytest.raises(ValueError, match="must not be negative"):
        SendLimits(slow_after_seconds=-1)
