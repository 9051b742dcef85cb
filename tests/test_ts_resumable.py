"""`@turnstore/client/resumable-stream` (client/typescript/src/resumable-stream.ts)
against a real daemon, one role per node process.

test/resumable-driver.ts plays one role per process (a producer through
createNewResumableStream or resumableStream, a reader through
resumeExistingStream, hasExistingStream, the reconnect route's
resumeStreamResponse); the tests start several against one daemon, kill or
freeze producers, and compare what every process saw with what the daemon
holds, read here through the Python client. What Redis's `resumable-stream`
cannot do is what these show: a resume after the producer died (from what
was stored), from another process, after the stream finished (replayed
whole), each chunk exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon
from tests.test_typescript import node_env, typescript_build  # noqa: F401 (fixtures)
from turnstore import StoredEvent, TurnFinished, TurnstoreClient

TS_DIR = Path(__file__).resolve().parent.parent / "client" / "typescript"
DRIVER = TS_DIR / "dist" / "test" / "resumable-driver.js"
CHUNK = "resumable_stream_chunk"

#: Short heartbeats and staleness, so that a dead producer is noticed in seconds.
TIMING = {"RS_HEARTBEAT_MS": "200", "RS_STALE_MS": "2000"}


def chunk(i: int) -> str:
    """The i-th chunk of the driver's sources (test/resumable-driver.ts's chunk())."""
    text = "é" * (i % 3) + f"✓{i}"
    return f'data: {{"i":{i},"text":"{text}"}}\n\n'


class Role:
    """One driver process: its JSON lines, read as they come."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.process = subprocess.Popen(
            ["node", str(DRIVER), *args],
            cwd=TS_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(json.loads(line))
        self._lines.put(None)

    def next(self, timeout: float = 60) -> dict[str, Any]:
        """The next message; fails the test if the process ends or says nothing in time."""
        try:
            message = self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the driver said nothing for {timeout} s")
        if message is None:
            self.process.wait(timeout=10)
            assert self.process.stderr is not None
            pytest.fail(
                f"the driver exited ({self.process.returncode}): {self.process.stderr.read()}"
            )
        return message

    def until(self, phase: str, timeout: float = 60) -> dict[str, Any]:
        """Skips messages up to the first of ``phase``."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(0.1, deadline - time.monotonic()))
            if message["phase"] == phase:
                return message

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)


@pytest.fixture
def run(
    typescript_build: Path,  # noqa: F811 (fixture)
    node_env: dict[str, str],  # noqa: F811 (fixture)
) -> Iterator[Callable[..., Role]]:
    """Starts driver roles against a target; kills what is left after the test."""
    roles: list[Role] = []

    def start(target: str, *args: str, **env: str) -> Role:
        role = Role({**node_env, **TIMING, "TURNSTORE_TARGET": target, **env}, *args)
        roles.append(role)
        return role

    yield start
    for role in roles:
        if role.process.poll() is None:
            role.process.kill()
        role.wait()


def once(run: Callable[..., Role], target: str, *args: str, **env: str) -> dict[str, Any]:
    """Runs a role to its end; its last message (it must exit 0)."""
    role = run(target, *args, **env)
    messages = []
    while True:
        message = role._lines.get(timeout=60)
        if message is None:
            break
        messages.append(message)
    assert role.wait() == 0, role.process.stderr.read() if role.process.stderr else ""
    return messages[-1]


async def _stored(target: str, stream_id: str) -> tuple[list[StoredEvent], bool]:
    """The stream's stored events (default mapping: turn 1 of `resumable-stream:<id>`)
    and whether its turn is finished."""
    events: list[StoredEvent] = []
    finished = False
    async with TurnstoreClient(target) as client:
        await client.wait_ready()
        async for item in client.events.replay(f"resumable-stream:{stream_id}"):
            if isinstance(item, StoredEvent):
                assert item.turn == 1
                events.append(item)
            elif isinstance(item, TurnFinished):
                finished = True
    return events, finished


def stored(target: str, stream_id: str) -> tuple[list[StoredEvent], bool]:
    return asyncio.run(_stored(target, stream_id))


def stored_chunks(events: list[StoredEvent]) -> list[str]:
    """The chunks' texts in position order, checking each index is there once, in order."""
    chunks = [e.envelope.event for e in events if e.envelope.event["type"] == CHUNK]
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    ids = [e.envelope.event_id for e in events]
    assert len(ids) == len(set(ids))
    return [c["text"] for c in chunks]


def end_reason(events: list[StoredEvent]) -> str | None:
    ends = [e.envelope.event for e in events if e.envelope.event["type"] == "resumable_stream_end"]
    assert len(ends) <= 1, ends
    return None if not ends else str(ends[0]["reason"])


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["lmdb", "postgres"])
def test_killed_producer_resumes_in_another_process_with_every_chunk_once(
    run: Callable[..., Role], start_daemon: Callable[..., Daemon], backend: str
) -> None:
    """The producer's process is SIGKILLed halfway; another process resumes the
    stream from what was stored: every stored chunk once, in order, then the
    stream ends (the reader, finding no heartbeat, seals it as abandoned), and
    from then on it is DONE and replays whole, the same chunks."""
    daemon = start_daemon(backend)
    stream_id = f"killed-{uuid.uuid4()}"
    producer = run(daemon.target, "produce", stream_id, "60", "40")
    assert producer.next()["phase"] == "created"
    seen = [producer.until("chunk")["text"] for _ in range(12)]
    producer.process.send_signal(signal.SIGKILL)
    assert producer.wait() == -signal.SIGKILL
    assert seen == [chunk(i) for i in range(12)]

    events, finished = stored(daemon.target, stream_id)
    kept = stored_chunks(events)
    assert not finished and end_reason(events) is None
    assert 12 <= len(kept) < 60, len(kept)  # stored before passed on; killed before the end
    assert kept == [chunk(i) for i in range(len(kept))]
    assert once(run, daemon.target, "has", stream_id)["state"] is True

    resumed = once(run, daemon.target, "resume", stream_id)
    assert resumed["chunks"] == kept

    events, finished = stored(daemon.target, stream_id)
    assert finished and end_reason(events) == "abandoned"
    assert stored_chunks(events) == kept
    assert once(run, daemon.target, "has", stream_id)["state"] == "DONE"
    assert once(run, daemon.target, "resume", stream_id)["chunks"] == kept


@pytest.mark.timeout(180)
def test_two_readers_from_other_processes_see_the_producers_chunks(
    run: Callable[..., Role], daemon: Daemon
) -> None:
    """Two readers join a live stream at different points, each in a process of
    its own: each sees exactly the producer's chunks, from the first, each once."""
    stream_id = f"live-{uuid.uuid4()}"
    producer = run(daemon.target, "produce", stream_id, "40", "30")
    assert producer.next()["phase"] == "created"
    produced = [producer.until("chunk")["text"] for _ in range(5)]
    first = run(daemon.target, "resume", stream_id)
    assert first.next()["result"] == "stream"
    produced += [producer.until("chunk")["text"] for _ in range(15)]
    second = run(daemon.target, "resume", stream_id)
    assert second.next()["result"] == "stream"
    while (message := producer.next())["phase"] == "chunk":
        produced.append(message["text"])
    assert message["phase"] == "done"
    assert produced == [chunk(i) for i in range(40)]
    assert first.until("done")["chunks"] == produced
    assert second.until("done")["chunks"] == produced
    for role in (producer, first, second):
        assert role.wait() == 0

    events, finished = stored(daemon.target, stream_id)
    assert finished and end_reason(events) == "done"
    assert stored_chunks(events) == produced


@pytest.mark.timeout(120)
def test_finished_stream_replays_whole_and_from_a_character_position(
    run: Callable[..., Role], daemon: Daemon
) -> None:
    """A finished stream is DONE; resuming it replays it whole (skipCharacters
    cuts across chunks); with replayFinished: false it gives null, as Redis's
    package does; the reconnect route answers 200 with the whole stream."""
    stream_id = f"finished-{uuid.uuid4()}"
    assert once(run, daemon.target, "produce", stream_id, "7", "5")["phase"] == "done"
    whole = [chunk(i) for i in range(7)]
    assert once(run, daemon.target, "has", stream_id)["state"] == "DONE"
    assert once(run, daemon.target, "resume", stream_id)["chunks"] == whole
    skip = len(whole[0]) + 5
    cut = once(run, daemon.target, "resume", stream_id, str(skip))["chunks"]
    assert cut == [whole[1][5:], *whole[2:]]
    assert "".join(cut) == "".join(whole)[skip:]
    refused = once(run, daemon.target, "resume", stream_id, RS_REPLAY_FINISHED="false")
    assert refused == {"phase": "done", "chunks": []}
    route = once(run, daemon.target, "route", stream_id)
    assert (route["status"], route["contentType"]) == (200, "text/event-stream")
    assert route["body"] == "".join(whole)


@pytest.mark.timeout(120)
def test_missing_stream_is_null_undefined_and_204(run: Callable[..., Role], daemon: Daemon) -> None:
    """A stream never started: hasExistingStream null, resumeExistingStream
    undefined, the reconnect route 204 with no body (also without a stream id),
    and nothing is written to the daemon by asking."""
    stream_id = f"missing-{uuid.uuid4()}"
    assert once(run, daemon.target, "has", stream_id)["state"] is None
    opened = run(daemon.target, "resume", stream_id)
    assert opened.next()["result"] == "undefined"
    assert opened.wait() == 0
    for asked in (stream_id, "-"):
        route = once(run, daemon.target, "route", asked)
        assert (route["status"], route["body"]) == (204, "")
    assert stored(daemon.target, stream_id) == ([], False)


@pytest.mark.timeout(120)
def test_has_existing_stream_follows_the_stream_through_its_states(
    run: Callable[..., Role], daemon: Daemon
) -> None:
    """null before, true while the producer writes, "DONE" once its finish barrier is stored."""
    stream_id = f"states-{uuid.uuid4()}"
    assert once(run, daemon.target, "has", stream_id)["state"] is None
    producer = run(daemon.target, "produce", stream_id, "30", "50")
    producer.until("chunk")
    assert once(run, daemon.target, "has", stream_id)["state"] is True
    producer.until("done")
    assert producer.wait() == 0
    assert once(run, daemon.target, "has", stream_id)["state"] == "DONE"


@pytest.mark.timeout(120)
def test_concurrent_resumable_stream_calls_start_one_producer(
    run: Callable[..., Role], daemon: Daemon
) -> None:
    """Three processes call resumableStream on one new id at once: exactly one
    starts its source, and all three read the same whole stream."""
    stream_id = f"race-{uuid.uuid4()}"
    roles = [run(daemon.target, "resumable", stream_id, "20", "20") for _ in range(3)]
    opened = [role.next() for role in roles]
    assert sorted(o["made"] for o in opened) == [False, False, True], opened
    for role in roles:
        assert role.until("done")["chunks"] == [chunk(i) for i in range(20)]
        assert role.wait() == 0
    events, finished = stored(daemon.target, stream_id)
    assert finished and stored_chunks(events) == [chunk(i) for i in range(20)]
    starts = [e for e in events if e.envelope.event["type"] == "resumable_stream_start"]
    assert len(starts) == 1


@pytest.mark.timeout(120)
def test_frozen_producer_cannot_append_after_a_reader_sealed_its_stream(
    run: Callable[..., Role], daemon: Daemon
) -> None:
    """A producer frozen (SIGSTOP) past the staleness limit is taken for dead: a
    reader seals the stream. Thawed, the producer's next write is refused by
    the finish barrier, its own stream fails, and nothing follows the end."""
    stream_id = f"frozen-{uuid.uuid4()}"
    producer = run(daemon.target, "produce", stream_id, "200", "30")
    producer.until("chunk")
    os.kill(producer.process.pid, signal.SIGSTOP)
    try:
        resumed = once(run, daemon.target, "resume", stream_id)
    finally:
        os.kill(producer.process.pid, signal.SIGCONT)
    assert producer.until("failed")["error"] == "TurnFinishedError"
    assert producer.wait() == 0
    events, finished = stored(daemon.target, stream_id)
    assert finished and end_reason(events) == "abandoned"
    assert events[-1].envelope.event["type"] == "resumable_stream_end"
    kept = stored_chunks(events)
    assert 1 <= len(kept) < 200
    assert resumed["chunks"] == kept == [chunk(i) for i in range(len(kept))]


@pytest.mark.timeout(120)
def test_failed_source_ends_the_stream_as_failed(run: Callable[..., Role], daemon: Daemon) -> None:
    """A source that errors after three chunks: the producer's own stream fails
    with its error, the stream is stored as ended ("error") and finished, so
    readers get the three chunks and an end instead of waiting for more."""
    stream_id = f"failed-{uuid.uuid4()}"
    producer = run(daemon.target, "produce", stream_id, "3", "5", "fail")
    assert producer.until("failed")["error"] == "RangeError"
    assert producer.wait() == 0
    events, finished = stored(daemon.target, stream_id)
    assert finished and end_reason(events) == "error"
    assert stored_chunks(events) == [chunk(i) for i in range(3)]
    assert once(run, daemon.target, "has", stream_id)["state"] == "DONE"
    assert once(run, daemon.target, "resume", stream_id)["chunks"] == [chunk(i) for i in range(3)]


@pytest.mark.timeout(180)
def test_stream_goes_on_across_a_daemon_restart(run: Callable[..., Role], tmp_path: Path) -> None:
    """The daemon is stopped and started again (same data, same socket) while a
    producer writes and a reader follows: the producer's writes are resent,
    the reader goes on from its last position, and both see every chunk once."""
    daemon = Daemon(tmp_path / "data")
    daemon.start()
    try:
        stream_id = f"restart-{uuid.uuid4()}"
        # Staleness far beyond the restart: the reader must not end the stream meanwhile.
        producer = run(daemon.target, "produce", stream_id, "60", "40", RS_STALE_MS="60000")
        assert producer.next()["phase"] == "created"
        produced = [producer.until("chunk")["text"] for _ in range(10)]
        reader = run(daemon.target, "resume", stream_id, RS_STALE_MS="60000")
        assert reader.next()["result"] == "stream"
        assert daemon.stop() == 0
        daemon.start()
        while (message := producer.next())["phase"] == "chunk":
            produced.append(message["text"])
        assert message["phase"] == "done"
        assert produced == [chunk(i) for i in range(60)]
        assert reader.until("done")["chunks"] == produced
        assert producer.wait() == 0 and reader.wait() == 0
        events, finished = stored(daemon.target, stream_id)
    finally:
        daemon.stop()
    assert finished and end_reason(events) == "done"
    assert stored_chunks(events) == produced


@pytest.mark.timeout(120)
def test_a_producer_slower_than_the_staleness_limit_is_kept_alive_by_heartbeats(
    run: Callable[..., Role], daemon: Daemon
) -> None:
    """Chunks 1.5 s apart with readers giving up after 1 s of silence: the
    producer's heartbeats (every 0.2 s when idle) keep the stream live, so
    the reader gets every chunk and the stream ends as done, not abandoned."""
    stream_id = f"slow-{uuid.uuid4()}"
    slow = {"RS_STALE_MS": "1000"}
    producer = run(daemon.target, "produce", stream_id, "3", "1500", **slow)
    producer.until("chunk")
    reader = run(daemon.target, "resume", stream_id, **slow)
    assert reader.until("done")["chunks"] == [chunk(i) for i in range(3)]
    producer.until("done")
    assert producer.wait() == 0 and reader.wait() == 0
    events, finished = stored(daemon.target, stream_id)
    assert finished and end_reason(events) == "done"
    beats = [e for e in events if e.envelope.event["type"] == "resumable_stream_heartbeat"]
    assert len(beats) >= 3, len(beats)


@pytest.mark.timeout(120)
def test_streams_mapped_to_turns_of_one_thread_stay_apart(
    run: Callable[..., Role], daemon: Daemon
) -> None:
    """With `locate` putting stream "N" in turn N of a chat's thread, two
    streams of one thread each replay only their own chunks, and each has
    its own state: the first DONE while the second is missing, then live."""
    thread = f"chat-{uuid.uuid4()}"
    chat = {"RS_CHAT_THREAD": thread}
    assert once(run, daemon.target, "produce", "1", "4", "5", **chat)["phase"] == "done"
    assert once(run, daemon.target, "has", "2", **chat)["state"] is None
    second = run(daemon.target, "produce", "2", "30", "50", **chat)
    second.until("chunk")
    assert once(run, daemon.target, "has", "1", **chat)["state"] == "DONE"
    assert once(run, daemon.target, "has", "2", **chat)["state"] is True
    assert once(run, daemon.target, "resume", "1", **chat)["chunks"] == [chunk(i) for i in range(4)]
    assert once(run, daemon.target, "resume", "2", **chat)["chunks"] == [
        chunk(i) for i in range(30)
    ]
    second.until("done")
    assert second.wait() == 0

    async def turns() -> list[tuple[int, bool, int]]:
        async with TurnstoreClient(daemon.target) as client:
            stored_turns = await client.events.get_turns(thread)
        return [(t.turn, t.finished, len(t.events)) for t in stored_turns]

    # Each turn: its start, its chunks, maybe heartbeats, its end.
    (one, done1, count1), (two, done2, count2) = asyncio.run(turns())
    assert (one, done1, two, done2) == (1, True, 2, True)
    assert count1 >= 6 and count2 >= 32
