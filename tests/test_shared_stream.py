"""The trait calls over the client's shared AppendStream, against real daemons.

``TurnstoreEventStore.append``, ``append_many`` and ``finish_turn`` share one
stream per client by default. These tests check what a caller must not be
able to tell apart from unary calls: crashes of the daemon, cancelled calls,
per-call deadlines, rejected items among good ones, and many concurrent
writers on one thread.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest

from tests.support.daemon import Daemon, DaemonStarter
from tests.support.eventually import eventually_async
from turnstore import (
    AgentEventEnvelope,
    DeadlineExceededError,
    RetryPolicy,
    StoredTurnEvents,
    TurnFinishedError,
    TurnstoreClient,
    UnavailableError,
)
from turnstore.appender import MAX_UNACKNOWLEDGED_ITEMS

PATIENT = RetryPolicy(attempts=200, initial_backoff=0.02, max_backoff=0.2)


def delta(text: str, sequence: int = 0) -> AgentEventEnvelope:
    return AgentEventEnvelope.new({"type": "text_delta", "delta": text}, sequence)


def awaiting_acknowledgement(client: TurnstoreClient) -> int:
    """How many calls wait in the client's shared stream for their acknowledgement.

    A call counted here has its place in the stream's order (its request id
    is taken): a call sent after it is written after it. This looks inside
    the client, because nothing outside it can tell a call that reached its
    send from one still on its way there while the daemon is paused.
    """
    shared = client.events._shared
    return 0 if shared is None else len(shared._pending)


async def started(client: TurnstoreClient, tasks: list[asyncio.Task[int]]) -> None:
    """Wait until every task's call has reached the shared stream (its send)."""
    await eventually_async(
        lambda: awaiting_acknowledgement(client) == len(tasks),
        what=f"{len(tasks)} calls in the shared stream",
        interval=0.001,
    )
    assert not any(task.done() for task in tasks)


@pytest.fixture
def own_daemon(start_daemon: DaemonStarter) -> Daemon:
    """A daemon of this test's own (it is stopped, paused or killed)."""
    return start_daemon()


async def test_the_default_mode_is_the_shared_stream(own_daemon: Daemon) -> None:
    async with TurnstoreClient(own_daemon.target) as client:
        assert client.events.write_mode == "stream"
        with pytest.raises(ValueError, match="write_mode"):
            TurnstoreClient(own_daemon.target, write_mode="bogus")  # type: ignore[arg-type]


async def test_many_writers_on_one_thread_get_distinct_consecutive_positions(
    own_daemon: Daemon,
) -> None:
    thread = f"t-{uuid.uuid4()}"
    async with TurnstoreClient(own_daemon.target) as client:

        async def writer(number: int) -> list[tuple[int, str]]:
            acked = []
            for sequence in range(25):
                event = delta(f"{number}:{sequence}", sequence)
                acked.append((await client.events.append(thread, 1, event), event.event_id))
            return acked

        results = await asyncio.gather(*(writer(n) for n in range(40)))
        await client.events.finish_turn(thread, 1)
        acked = dict(pair for result in results for pair in result)
        assert sorted(acked) == list(range(1000))
        stored = await client.events.get_events(thread)
        assert [stored[position].event_id for position in range(1000)] == [
            acked[position] for position in range(1000)
        ]
        # Each writer's own events are in the order it awaited them.
        for result in results:
            assert [position for position, _ in result] == sorted(p for p, _ in result)


async def test_a_rejected_item_fails_only_its_own_call(own_daemon: Daemon) -> None:
    thread = f"t-{uuid.uuid4()}"
    async with TurnstoreClient(own_daemon.target) as client:
        await client.events.finish_turn(thread, 1)
        outcomes = await asyncio.gather(
            *(
                client.events.append(thread, 1 if n % 3 == 0 else 2, delta(str(n)))
                for n in range(30)
            ),
            return_exceptions=True,
        )
        refused = [n for n, outcome in enumerate(outcomes) if isinstance(outcome, BaseException)]
        assert refused == list(range(0, 30, 3))
        assert all(isinstance(outcomes[n], TurnFinishedError) for n in refused)
        assert sorted(o for o in outcomes if isinstance(o, int)) == list(range(20))
        assert await client.events.event_count(thread) == 20


async def test_a_cancelled_call_leaves_the_others_to_complete(own_daemon: Daemon) -> None:
    assert own_daemon.process is not None
    pid = own_daemon.process.pid
    thread = f"t-{uuid.uuid4()}"
    async with TurnstoreClient(own_daemon.target) as client:
        assert await client.events.append(thread, 1, delta("before")) == 0
        # A paused daemon acknowledges nothing: every call below is in flight.
        os.kill(pid, signal.SIGSTOP)
        events = [delta(str(n), n) for n in range(10)]
        calls = [asyncio.create_task(client.events.append(thread, 1, e)) for e in events]
        await started(client, calls)
        calls[4].cancel()
        with pytest.raises(asyncio.CancelledError):
            await calls[4]
        os.kill(pid, signal.SIGCONT)
        positions = await asyncio.gather(*(calls[:4] + calls[5:]))
        # The cancelled append was sent and may have been stored; nothing is lost
        # or doubled either way.
        stored = await client.events.get_events(thread)
        ids = [event.event_id for event in stored]
        assert len(ids) == len(set(ids))
        assert stored[0].event["delta"] == "before" and len(ids) in (10, 11)
        for event, position in zip(events[:4] + events[5:], positions, strict=True):
            assert ids[position] == event.event_id
        assert await client.events.append(thread, 1, delta("after")) == len(ids)


async def test_a_deadline_fails_only_its_own_call(own_daemon: Daemon) -> None:
    assert own_daemon.process is not None
    pid = own_daemon.process.pid
    thread = f"t-{uuid.uuid4()}"
    async with TurnstoreClient(own_daemon.target, timeout=60) as client:
        await client.events.append(thread, 1, delta("warm"))
        os.kill(pid, signal.SIGSTOP)
        patient = [
            asyncio.create_task(client.events.append(thread, 1, delta(str(n)))) for n in range(5)
        ]
        await started(client, patient)
        hasty_event = delta("hasty")
        with pytest.raises(DeadlineExceededError):
            await client.events.append(thread, 1, hasty_event, timeout=0.2)
        with pytest.raises(DeadlineExceededError):
            await client.events.finish_turn(thread, 1, timeout=0.2)
        assert not any(call.done() for call in patient)
        os.kill(pid, signal.SIGCONT)
        assert sorted(await asyncio.gather(*patient)) == [1, 2, 3, 4, 5]
        # Like a unary call past its deadline, the hasty append and finish may
        # still have taken effect (if sent in time), once each and last. An
        # append acknowledged now comes after everything sent before it.
        await client.events.append(thread, 2, delta("barrier"))
        turn = await client.events.get_turn(thread, 1)
        assert turn is not None
        ids = [event.event_id for event in turn.events]
        assert len(ids) in (6, 7) and ids.count(hasty_event.event_id) == (len(ids) == 7)
        assert hasty_event.event_id not in ids[:6]


async def test_calls_fail_unavailable_once_the_retry_policy_is_spent(own_daemon: Daemon) -> None:
    brief = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.02)
    async with TurnstoreClient(own_daemon.target, retry=brief) as client:
        await client.events.append("t", 1, delta("a"))
        assert own_daemon.stop() == 0
        with pytest.raises(UnavailableError):
            await client.events.append("t", 1, delta("b"))
        await asyncio.to_thread(own_daemon.start)
        await client.wait_ready()
        # The stream is opened again for the next call.
        assert await client.events.append("t", 1, delta("c")) == 1


async def test_a_daemon_killed_under_32_writers_loses_and_doubles_nothing(
    own_daemon: Daemon,
) -> None:
    threads = [f"t-{uuid.uuid4()}" for _ in range(4)]
    per_writer = 60
    acked: dict[str, dict[str, int]] = {thread: {} for thread in threads}
    progress = asyncio.Event()
    total = 0

    async with TurnstoreClient(own_daemon.target, retry=PATIENT) as client:

        async def writer(number: int) -> None:
            nonlocal total
            thread = threads[number % len(threads)]
            for sequence in range(per_writer):
                event = delta(f"{number}:{sequence}", sequence)
                acked[thread][event.event_id] = await client.events.append(thread, 1, event)
                total += 1
                if total >= 400:
                    progress.set()

        writers = [asyncio.create_task(writer(n)) for n in range(32)]
        await asyncio.wait_for(progress.wait(), 60)
        own_daemon.kill()
        await asyncio.to_thread(own_daemon.start)
        await asyncio.wait_for(asyncio.gather(*writers), 120)

        assert total == 32 * per_writer
        for thread in threads:
            stored = await client.events.get_events(thread)
            ids = [event.event_id for event in stored]
            assert len(ids) == len(set(ids)), "an event was stored twice"
            assert len(ids) == 8 * per_writer
            for event_id, position in acked[thread].items():
                assert ids[position] == event_id


async def test_an_appender_resends_what_a_killed_daemon_never_acknowledged(
    own_daemon: Daemon,
) -> None:
    """``appender()`` is built on the same retrying stream: a restart costs nothing."""
    assert own_daemon.process is not None
    thread = f"t-{uuid.uuid4()}"
    events = [delta(str(n), n) for n in range(100)]
    async with (
        TurnstoreClient(own_daemon.target, retry=PATIENT) as client,
        client.events.appender() as appender,
    ):
        acknowledged = [await appender.submit(thread, 1, [event]) for event in events[:50]]
        assert await asyncio.gather(*acknowledged) == [[n] for n in range(50)]
        # A paused daemon acknowledges nothing: these are in flight when it dies.
        os.kill(own_daemon.process.pid, signal.SIGSTOP)
        in_flight = [await appender.submit(thread, 1, [event]) for event in events[50:]]
        finish = await appender.submit(thread, 1, [], finish=True)
        own_daemon.kill()
        await asyncio.to_thread(own_daemon.start)
        positions = await asyncio.wait_for(asyncio.gather(*in_flight, finish), 120)
        assert positions == [[n] for n in range(50, 100)] + [[]]
        # The stream goes on after the restart.
        assert await appender.append(thread, 2, delta("after")) == 100
    turn = await client_turn(own_daemon, thread)
    assert turn.finished
    assert [event.event_id for event in turn.events] == [event.event_id for event in events]


async def test_an_appender_runs_only_a_bounded_way_ahead_of_its_acknowledgements(
    own_daemon: Daemon,
) -> None:
    """``submit`` waits once MAX_UNACKNOWLEDGED_ITEMS are unacknowledged: memory stays bounded."""
    assert own_daemon.process is not None
    pid = own_daemon.process.pid
    thread = f"t-{uuid.uuid4()}"
    async with (
        TurnstoreClient(own_daemon.target) as client,
        client.events.appender() as appender,
    ):
        assert await (await appender.submit(thread, 1, [delta("warm")])) == [0]
        os.kill(pid, signal.SIGSTOP)
        ahead = [
            await appender.submit(thread, 1, [delta(str(n), n)])
            for n in range(MAX_UNACKNOWLEDGED_ITEMS)
        ]
        one_more = asyncio.ensure_future(appender.submit(thread, 1, [delta("one more")]))
        # A bounded wait for what must not happen: a submit past the window.
        done, _ = await asyncio.wait({one_more}, timeout=1.0)
        assert not done, "submit ran past the window while nothing was acknowledged"
        os.kill(pid, signal.SIGCONT)
        last = await asyncio.wait_for(one_more, 60)
        positions = await asyncio.wait_for(asyncio.gather(*ahead, last), 60)
        assert positions == [[n] for n in range(1, MAX_UNACKNOWLEDGED_ITEMS + 2)]


async def client_turn(daemon: Daemon, thread: str) -> StoredTurnEvents:
    async with TurnstoreClient(daemon.target) as client:
        turn = await client.events.get_turn(thread, 1)
    assert turn is not None
    return turn
