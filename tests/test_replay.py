"""Streaming replay and streaming appends against a real daemon."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import uuid
from pathlib import Path

import grpc
import pytest

from tests.support.daemon import Daemon, DaemonStarter
from tests.support.eventually import eventually_async
from turnstore import (
    AgentEventEnvelope,
    CaughtUp,
    DeadlineExceededError,
    InvalidArgumentError,
    ReplayItem,
    StoredEvent,
    ThreadCleared,
    TurnAlreadyFinishedError,
    TurnFinished,
    TurnFinishedError,
    TurnstoreClient,
    UnavailableError,
)
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

EXAMPLE = Path(__file__).parent.parent / "examples" / "live_tail.py"


@pytest.fixture(params=["lmdb", "postgres"])
def daemon(request: pytest.FixtureRequest, daemon: Daemon) -> Daemon:
    """The shared daemon of each backend: every test here on a daemon runs on both."""
    if request.param == "postgres":
        shared: Daemon = request.getfixturevalue("postgres_daemon")
        return shared
    return daemon


def delta(text: str, event_type: str = "text_delta") -> AgentEventEnvelope:
    return AgentEventEnvelope.new({"type": event_type, "delta": text})


async def collect(client: TurnstoreClient, thread: str, **kwargs: object) -> list[ReplayItem]:
    return [item async for item in client.events.replay(thread, **kwargs)]  # type: ignore[arg-type]


def positions(items: list[ReplayItem]) -> list[int]:
    return [item.position for item in items if isinstance(item, StoredEvent)]


async def stats(target: str) -> pb.GetStatsResponse:
    async with grpc.aio.insecure_channel(target) as channel:
        response: pb.GetStatsResponse = await pb_grpc.AdminServiceStub(channel).GetStats(
            pb.GetStatsRequest()
        )
        return response


async def test_catch_up_marks_finished_turns_and_caught_up_once(
    client: TurnstoreClient, thread_id: str
) -> None:
    await client.events.append_many(thread_id, 1, [delta("a"), delta("b")])
    await client.events.finish_turn(thread_id, 1)
    await client.events.finish_turn(thread_id, 5)  # empty
    await client.events.append(thread_id, 2, delta("c"))
    items = await collect(client, thread_id)
    assert [type(i).__name__ for i in items] == [
        "StoredEvent",
        "StoredEvent",
        "TurnFinished",
        "TurnFinished",
        "StoredEvent",
        "CaughtUp",
    ]
    assert items[2] == TurnFinished(1, 2, 1)
    assert items[3] == TurnFinished(5, 0, None)
    assert items[-1] == CaughtUp(3)


async def test_unknown_thread_replays_as_just_caught_up(
    client: TurnstoreClient, thread_id: str
) -> None:
    assert await collect(client, thread_id) == [CaughtUp(0)]


async def test_resume_after_a_position_skips_exactly_what_was_seen(
    client: TurnstoreClient, thread_id: str
) -> None:
    await client.events.append_many(thread_id, 1, [delta(str(n)) for n in range(10)])
    for after in range(-1, 10):
        items = await collect(client, thread_id, after=None if after < 0 else after)
        assert positions(items) == list(range(after + 1, 10))


async def test_finish_markers_repeat_only_at_the_cursor(
    client: TurnstoreClient, thread_id: str
) -> None:
    await client.events.append_many(thread_id, 1, [delta("a"), delta("b")])
    await client.events.finish_turn(thread_id, 1)
    await client.events.append(thread_id, 2, delta("c"))
    # A reader that saw position 1 may not have seen the finish that followed it.
    assert TurnFinished(1, 2, 1) in await collect(client, thread_id, after=1)
    # A reader that saw position 2 has seen it: it came before position 2.
    assert not [i for i in await collect(client, thread_id, after=2) if isinstance(i, TurnFinished)]


async def test_filters_by_turn_range_and_type(client: TurnstoreClient, thread_id: str) -> None:
    for turn in (1, 2, 3):
        await client.events.append_many(
            thread_id, turn, [delta(f"{turn}a"), delta(f"{turn}b", "tool_call_start")]
        )
        await client.events.finish_turn(thread_id, turn)
    items = await collect(client, thread_id, from_turn=2, to_turn=2)
    assert positions(items) == [2, 3]
    assert [i.turn for i in items if isinstance(i, TurnFinished)] == [2]
    items = await collect(client, thread_id, event_types=["tool_call_start"])
    assert positions(items) == [1, 3, 5]
    with pytest.raises(InvalidArgumentError, match="from_turn"):
        await collect(client, thread_id, from_turn=3, to_turn=2)


async def test_follow_streams_live_commits_until_the_named_turn_finishes(
    client: TurnstoreClient, thread_id: str
) -> None:
    replay = client.events.replay(thread_id, follow=True, until_turn_finished=2)
    iterator = aiter(replay)
    assert await anext(iterator) == CaughtUp(0)
    await client.events.append(thread_id, 1, delta("a"))
    first = await anext(iterator)
    assert isinstance(first, StoredEvent) and first.position == 0
    await client.events.finish_turn(thread_id, 1)
    assert await anext(iterator) == TurnFinished(1, 1, 0)
    await client.events.append(thread_id, 2, delta("b"))
    await client.events.finish_turn(thread_id, 2)
    rest = [item async for item in iterator]
    assert positions(rest) == [1]
    assert rest[-1] == TurnFinished(2, 1, 1)


async def test_follow_of_a_turn_finished_before_the_cursor_ends_when_caught_up(
    client: TurnstoreClient, thread_id: str
) -> None:
    await client.events.append(thread_id, 1, delta("a"))
    await client.events.finish_turn(thread_id, 1)
    await client.events.append(thread_id, 2, delta("b"))
    items = await collect(client, thread_id, after=1, follow=True, until_turn_finished=1)
    assert items == [CaughtUp(2)]


async def test_a_follower_is_told_when_the_thread_is_cleared(
    client: TurnstoreClient, thread_id: str
) -> None:
    await client.events.append(thread_id, 1, delta("a"))
    replay = client.events.replay(thread_id, follow=True)
    iterator = aiter(replay)
    assert isinstance(await anext(iterator), StoredEvent)
    assert await anext(iterator) == CaughtUp(1)
    await client.events.clear(thread_id)
    assert await anext(iterator) == ThreadCleared(1)
    assert [item async for item in iterator] == []


async def test_resuming_with_an_old_epoch_after_a_clear_reports_the_clear(
    client: TurnstoreClient, thread_id: str
) -> None:
    await client.events.append_many(thread_id, 1, [delta("a"), delta("b")])
    replay = client.events.replay(thread_id)
    _ = [item async for item in replay]
    assert replay.epoch is not None and replay.last_position == 1
    await client.events.clear(thread_id)
    await client.events.append_many(thread_id, 1, [delta("x"), delta("y"), delta("z")])
    items = await collect(client, thread_id, after=replay.last_position, epoch=replay.epoch)
    assert items == [ThreadCleared(2)]


async def test_a_follower_deadline_raises_deadline_exceeded(
    client: TurnstoreClient, thread_id: str
) -> None:
    with pytest.raises(DeadlineExceededError):
        await collect(client, thread_id, follow=True, timeout=0.5)


async def test_resuming_reader_gets_every_event_exactly_once_while_writers_append(
    client: TurnstoreClient, thread_id: str
) -> None:
    acknowledged: dict[int, str] = {}
    sentinel_turn = 1000

    async def writer(index: int) -> None:
        for n in range(150):
            # Each writer alternates between two turns: turns interleave.
            envelope = delta(f"w{index}-{n}")
            position = await client.events.append(thread_id, index + 3 * (n % 2), envelope)
            acknowledged[position] = envelope.event_id

    async def writers() -> None:
        await asyncio.gather(*(writer(index) for index in range(3)))
        await client.events.finish_turn(thread_id, sentinel_turn)

    writing = asyncio.create_task(writers())
    rng = random.Random(7)
    received: list[tuple[int, str]] = []
    reconnects = 0
    after: int | None = None
    epoch: int | None = None
    finished = False
    while not finished:
        budget = rng.randint(1, 40)
        async with client.events.replay(
            thread_id, after, epoch=epoch, follow=True, until_turn_finished=sentinel_turn
        ) as replay:
            finished = True
            async for item in replay:
                if isinstance(item, StoredEvent):
                    received.append((item.position, item.envelope.event_id))
                    budget -= 1
                    if budget == 0:
                        finished = False
                        break
            after, epoch = replay.last_position, replay.epoch
        reconnects += 1
    await writing
    assert reconnects > 5
    assert [position for position, _ in received] == list(range(450))
    assert dict(received) == acknowledged


async def test_two_hundred_followers_each_receive_every_event(daemon: Daemon) -> None:
    thread = f"fanout-{uuid.uuid4()}"
    followers = 200
    ready = 0
    all_ready = asyncio.Event()

    async def follow(client: TurnstoreClient) -> list[int]:
        nonlocal ready
        seen: list[int] = []
        async with client.events.replay(thread, follow=True, until_turn_finished=1) as replay:
            async for item in replay:
                if isinstance(item, CaughtUp):
                    ready += 1
                    if ready == followers:
                        all_ready.set()
                elif isinstance(item, StoredEvent):
                    seen.append(item.position)
        return seen

    clients = [TurnstoreClient(daemon.target) for _ in range(4)]
    try:
        tasks = [asyncio.create_task(follow(clients[n % 4])) for n in range(followers)]
        await asyncio.wait_for(all_ready.wait(), 60)
        for batch in range(10):
            await clients[0].events.append_many(
                thread, 1, [delta(f"{batch}.{n}") for n in range(10)]
            )
        await clients[0].events.finish_turn(thread, 1)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    finally:
        for client in clients:
            await client.aclose()
    assert all(seen == list(range(100)) for seen in results)


async def test_cancelled_followers_leave_nothing_registered(
    data_dir: Path, backend_args: list[str], start_daemon: DaemonStarter
) -> None:
    daemon = start_daemon("lmdb", *backend_args, data_dir=data_dir)
    async with TurnstoreClient(daemon.target) as client:
        replays = [client.events.replay(f"t{n}", follow=True) for n in range(10)]
        for replay in replays:
            assert await anext(aiter(replay)) == CaughtUp(0)
        before = await stats(daemon.target)
        assert before.open_replays == 10
        for replay in replays:
            await replay.aclose()

        async def no_replay_open() -> bool:
            return (await stats(daemon.target)).open_replays == 0

        # The daemon learns of the cancellations asynchronously.
        await eventually_async(no_replay_open, what="the closed replays to be forgotten")
        after = await stats(daemon.target)
        assert (after.open_replays, after.live_followers) == (0, 0)
    assert daemon.stop() == 0


def rss_anon_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc status")


async def test_a_stalled_follower_does_not_make_the_daemon_buffer(
    data_dir: Path, backend_args: list[str], start_daemon: DaemonStarter
) -> None:
    daemon = start_daemon("lmdb", *backend_args, data_dir=data_dir)
    assert daemon.process is not None
    total = 100_000
    async with TurnstoreClient(daemon.target) as reader, TurnstoreClient(daemon.target) as writer:
        replay = reader.events.replay("t", follow=True, until_turn_finished=1)
        iterator = aiter(replay)
        assert await anext(iterator) == CaughtUp(0)
        # Warm up the daemon's allocator with a first round, then measure.
        body = "x" * 150
        await writer.events.append_many("warm", 1, [delta(body) for _ in range(2000)])
        before = rss_anon_kib(daemon.process.pid)
        for _ in range(total // 1000):
            await writer.events.append_many("t", 1, [delta(body) for _ in range(1000)])
        await writer.events.finish_turn("t", 1)
        grown_mib = (rss_anon_kib(daemon.process.pid) - before) / 1024
        # 100,000 events are about 30 MB on the wire: holding them would show.
        assert grown_mib < 15, f"daemon memory grew by {grown_mib:.1f} MiB"
        received = [item async for item in iterator]
        assert positions(received) == list(range(total))
        assert received[-1] == TurnFinished(1, total, total - 1)
    assert daemon.stop() == 0


async def test_sigterm_ends_followers_with_unavailable(
    data_dir: Path, backend_args: list[str], start_daemon: DaemonStarter
) -> None:
    daemon = start_daemon("lmdb", *backend_args, data_dir=data_dir)
    async with TurnstoreClient(daemon.target) as client:
        replay = client.events.replay("t", follow=True)
        iterator = aiter(replay)
        assert await anext(iterator) == CaughtUp(0)
        assert daemon.process is not None
        daemon.process.terminate()
        with pytest.raises(UnavailableError):
            await anext(iterator)
    assert daemon.wait_exit() == 0


async def test_append_stream_acknowledges_in_order_and_reports_rejections(
    client: TurnstoreClient, thread_id: str
) -> None:
    async with client.events.appender() as appender:
        first = await appender.submit(thread_id, 1, [delta("a"), delta("b")])
        finish = await appender.submit(thread_id, 1, [delta("c")], finish=True)
        late = await appender.submit(thread_id, 1, [delta("late")])
        again = await appender.submit(thread_id, 1, [], finish=True)
        other = await appender.submit(thread_id, 2, [delta("d")])
        assert await first == [0, 1]
        assert await finish == [2]
        with pytest.raises(TurnFinishedError, match="finished turn 1"):
            await late
        with pytest.raises(TurnAlreadyFinishedError):
            await again
        assert await other == [3]
        assert await appender.append(thread_id, 2, delta("e")) == 4
        await appender.finish_turn(thread_id, 2)
    turns = await client.events.get_turns(thread_id)
    assert [(t.turn, [e.event["delta"] for e in t.events], t.finished) for t in turns] == [
        (1, ["a", "b", "c"], True),
        (2, ["d", "e"], True),
    ]


async def test_append_stream_rejects_bad_items_and_goes_on(
    raw_channel: grpc.aio.Channel, thread_id: str
) -> None:
    stub = pb_grpc.EventStoreServiceStub(raw_channel)
    good = pb.EventEnvelope(event_id="e", type="x")
    requests = [
        pb.AppendStreamRequest(request_id=7, thread_id="", turn=1, events=[good]),
        pb.AppendStreamRequest(request_id=8, thread_id=thread_id, turn=1),
        pb.AppendStreamRequest(request_id=9, thread_id=thread_id, turn=1, events=[good]),
    ]
    call = stub.AppendStream(iter(requests))
    acks = [ack async for ack in call]
    assert [ack.request_id for ack in acks] == [7, 8, 9]
    assert [ack.error.code for ack in acks[:2]] == [grpc.StatusCode.INVALID_ARGUMENT.value[0]] * 2
    assert "thread_id" in acks[0].error.message and acks[0].error.reason == "invalid_argument"
    assert list(acks[2].positions) == [0]


async def test_append_stream_bare_finish_acks_the_event_count(
    raw_channel: grpc.aio.Channel, thread_id: str
) -> None:
    stub = pb_grpc.EventStoreServiceStub(raw_channel)
    events = [pb.EventEnvelope(event_id=f"e{i}", type="x") for i in range(3)]
    requests = [
        pb.AppendStreamRequest(request_id=1, thread_id=thread_id, turn=1, events=events[:2]),
        pb.AppendStreamRequest(request_id=2, thread_id=thread_id, turn=1, finish_turn=True),
        pb.AppendStreamRequest(
            request_id=3, thread_id=thread_id, turn=2, events=events[2:], finish_turn=True
        ),
        pb.AppendStreamRequest(request_id=4, thread_id=thread_id, turn=5, finish_turn=True),
    ]
    acks = [ack async for ack in stub.AppendStream(iter(requests))]
    assert [ack.request_id for ack in acks] == [1, 2, 3, 4]
    assert [ack.HasField("event_count") for ack in acks] == [False, True, False, True]
    assert [acks[1].event_count, acks[3].event_count] == [2, 0]
    assert [list(ack.positions) for ack in acks] == [[0, 1], [], [2], []]


@pytest.fixture
async def raw_channel(daemon: Daemon) -> object:
    async with grpc.aio.insecure_channel(daemon.target) as channel:
        yield channel


async def test_tail_prints_json_lines_when_piped(client: TurnstoreClient, daemon: Daemon) -> None:
    thread = f"tail-{uuid.uuid4()}"
    await client.events.append(thread, 1, delta("hello"))
    await client.events.finish_turn(thread, 1)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "turnstore", "tail", thread, "--target", daemon.target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["position"] == 0 and lines[0]["delta"] == "hello"
    assert lines[0]["type"] == "text_delta" and lines[0]["turn"] == 1
    assert lines[1] == {"marker": "turn_finished", "turn": 1, "event_count": 1, "last_position": 0}
    assert lines[2] == {"marker": "caught_up", "next_position": 1}


async def test_tail_follow_prints_events_as_they_arrive(
    client: TurnstoreClient, daemon: Daemon
) -> None:
    thread = f"tail-{uuid.uuid4()}"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "turnstore",
        "tail",
        thread,
        "--follow",
        "--target",
        daemon.target,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        caught_up = json.loads(await asyncio.wait_for(process.stdout.readline(), 60))
        assert caught_up["marker"] == "caught_up"
        for text in ("one", "two"):
            await client.events.append(thread, 1, delta(text))
            line = json.loads(await asyncio.wait_for(process.stdout.readline(), 60))
            assert line["delta"] == text
    finally:
        process.terminate()
        await process.wait()


async def test_the_live_tail_example_ends_with_exactly_the_written_text(daemon: Daemon) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(EXAMPLE), daemon.target],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the reader ended with exactly the text that was written" in result.stdout
    assert "first connection: 100 deltas so far" in result.stdout
