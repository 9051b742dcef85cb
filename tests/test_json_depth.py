"""One JSON, readable everywhere: the nesting limit, strict JSON snapshots, the same
refusals on both backends, the ``more`` scan and hostile import lines.

The daemon refuses a body or a snapshot labelled JSON nested deeper than 64 levels
with INVALID_ARGUMENT naming the limit, and every reader (Python, HTTP JSON, SSE,
the CLI, TypeScript, Rust) reads a body exactly at it. Bodies stored deeper by an
older version reach readers as ``body_error`` instead of poisoning the stream.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import grpc
import pytest

from tests.support.daemon import Daemon, DaemonStarter
from tests.support.hostile.checker import json_depth
from tests.support.hostile.strategies import field_bytes
from tests.support.hostile.wire import APPEND_STREAM, connect
from tests.support.sse_client import open_stream, strict_json
from tests.test_cli import clean_env, json_lines
from tests.test_cli import run as run_cli
from tests.test_rust import TS_DIR, _interop, interop_program  # noqa: F401  (fixture)
from tests.test_typescript import node_env, typescript_build  # noqa: F401  (fixtures)
from turnstore import AgentEventEnvelope, InvalidArgumentError, TurnstoreClient
from turnstore.server.storage.config import EngineConfig
from turnstore.server.storage.lmdb.engine import LmdbEngine
from turnstore.server.storage.values import NewEvent
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

LIMIT: Final = 64  # the documented limit (README, proto)
NAMED: Final = f"limit of {LIMIT} levels"


def nested(levels: int) -> Any:
    """A JSON value ``levels`` deep, objects and arrays alternating (``levels`` >= 1)."""
    value: Any = "leaf"
    for level in range(levels):
        value = {"a": value} if level % 2 == 0 else [value]
    return value


def deep_event(levels: int) -> dict[str, Any]:
    """A ``tool_call_start`` event (one agent-sdk and every client know) whose body
    (the event without ``type``) is ``levels`` deep."""
    event = {
        "type": "tool_call_start",
        "id": "c1",
        "name": "search",
        "display_name": "Search",
        "input": nested(levels - 1),
        "tier": "Confirm",
    }
    assert json_depth({k: v for k, v in event.items() if k != "type"}) == levels
    return event


def deep_bytes(levels: int) -> bytes:
    """A JSON object body ``levels`` deep, as bytes."""
    return b'{"a":' * levels + b"1" + b"}" * levels


@pytest.fixture(params=["lmdb", "postgres"])
def backend_daemon(request: pytest.FixtureRequest) -> Daemon:
    """The session's shared daemon of each backend."""
    name = "postgres_daemon" if request.param == "postgres" else "daemon"
    daemon: Daemon = request.getfixturevalue(name)
    return daemon


# -- the limit, at write time -------------------------------------------------------


@pytest.mark.parametrize("mode", ["unary", "stream"])
async def test_a_body_over_the_limit_is_refused_naming_it(
    backend_daemon: Daemon, thread_id: str, mode: Any
) -> None:
    async with TurnstoreClient(backend_daemon.target, write_mode=mode) as client:
        for levels in (200, LIMIT + 1):
            with pytest.raises(InvalidArgumentError, match=NAMED):
                await client.events.append(
                    thread_id, 1, AgentEventEnvelope.new(deep_event(levels), 0)
                )
        assert await client.events.event_count(thread_id) == 0
        await client.events.append(thread_id, 1, AgentEventEnvelope.new(deep_event(LIMIT), 0))
        assert await client.events.event_count(thread_id) == 1


async def test_raw_grpc_bodies_over_the_limit_are_refused_however_deep(
    backend_daemon: Daemon, thread_id: str
) -> None:
    """Also past orjson's own 1,024 levels: the limit is named, not a parser's message."""
    async with grpc.aio.insecure_channel(backend_daemon.target) as channel:
        stub = pb_grpc.EventStoreServiceStub(channel)
        for levels in (LIMIT + 1, 200, 1_000, 5_000):
            bad = pb.EventEnvelope(event_id=f"deep-{levels}", type="x", body=deep_bytes(levels))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Append(pb.AppendRequest(thread_id=thread_id, turn=1, events=[bad]))
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "events[0].body" in (raised.value.details() or "")
            assert NAMED in (raised.value.details() or "")
        # Deep and unclosed, with a quote every two bytes: refused at once (a
        # bracket count that re-scanned from every quote would take minutes).
        for hostile in (b"[" * 70 + b'"' + b'\\"' * 200_000, b"[" * 70 + b'"a\\' * 200_000):
            bad = pb.EventEnvelope(event_id="hostile", type="x", body=hostile)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Append(
                    pb.AppendRequest(thread_id=thread_id, turn=1, events=[bad]), timeout=20
                )
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value
        # Brackets inside strings are text, not nesting.
        text = pb.EventEnvelope(event_id="brackets", type="x", body=b'{"s":"' + b"[{" * 500 + b'"}')
        await stub.Append(pb.AppendRequest(thread_id=thread_id, turn=1, events=[text]))
        count = await stub.EventCount(pb.EventCountRequest(thread_id=thread_id))
        assert count.count == 1


# -- a body at the limit, read by every reader --------------------------------------


@pytest.fixture(scope="module")
def web_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    """A daemon with the HTTP API on, and its base URL."""
    starter = DaemonStarter(tmp_path_factory.mktemp("json-depth"), shared=True)
    process = starter("lmdb", "--http-listen", "127.0.0.1:0")
    yield process, process.serving["http"]
    starter.close()


AROUND: Final = [
    {"type": "text_delta", "message_id": "m", "delta": "before"},
    {"type": "text_delta", "message_id": "m", "delta": "after"},
]


async def write_at_the_limit(target: str, thread: str) -> list[dict[str, Any]]:
    """Turn 1 (finished): an event, one at the limit, another; their flat JSON."""
    events = [
        AgentEventEnvelope.new(AROUND[0], 0),
        AgentEventEnvelope.new(deep_event(LIMIT), 1),
        AgentEventEnvelope.new(AROUND[1], 2),
    ]
    async with TurnstoreClient(target) as client:
        await client.events.append_many(thread, 1, events)
        await client.events.finish_turn(thread, 1)
    return [event.to_json_dict() for event in events]


def thread_url(base: str, thread: str, tail: str) -> str:
    return f"{base}/v1/threads/{urllib.parse.quote(thread, safe='')}/{tail}"


def without_stored_fields(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in ("position", "turn")}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_a_body_at_the_limit_is_read_by_python_http_sse_and_the_cli(
    web_daemon: tuple[Daemon, str], http: aiohttp.ClientSession, thread_id: str
) -> None:
    daemon, base = web_daemon
    written = await write_at_the_limit(daemon.target, thread_id)

    async with TurnstoreClient(daemon.target) as client:
        (turn,) = await client.events.get_turns(thread_id)
        assert [e.to_json_dict() for e in turn.events] == written
        replayed = [
            item.envelope.to_json_dict()
            async for item in client.events.replay(thread_id)
            if hasattr(item, "envelope")
        ]
        assert replayed == written

    response = await http.get(thread_url(base, thread_id, "turns"))
    assert response.status == 200, await response.text()
    (http_turn,) = strict_json(await response.text())["turns"]
    assert [without_stored_fields(e) for e in http_turn["events"]] == written

    stream = await open_stream(http, thread_url(base, thread_id, "events?follow=0"))
    data = [event.json() for event in await stream.rest() if event.name == "message"]
    assert [without_stored_fields(e) for e in data] == written

    tail = await asyncio.to_thread(
        run_cli, "tail", thread_id, "--target", daemon.target, "--format", "json"
    )
    assert tail.returncode == 0, tail.stderr
    tailed = [line for line in json_lines(tail.stdout) if "event_id" in line]
    assert [without_stored_fields(e) for e in tailed] == written

    turns = await asyncio.to_thread(
        run_cli, "turns", thread_id, "--events", "--target", daemon.target, "--format", "json"
    )
    assert turns.returncode == 0, turns.stderr
    assert json_lines(turns.stdout)[0]["events"] == written


# The TypeScript client's getTurns, as the Rust interop test reads it.
NODE_READER: Final = """
const { TurnstoreClient, envelopeToJson } = require(process.argv[1]);
const client = new TurnstoreClient(process.env.TURNSTORE_TARGET);
client.events.getTurns(process.env.TURNSTORE_THREAD).then((turns) => {
  const flat = turns.map((t) => ({
    turn: t.turn, finished: t.finished, events: t.events.map((e) => envelopeToJson(e.envelope)),
  }));
  console.log(JSON.stringify({ turns: flat }));
  client.close();
}, (error) => { console.error(error); process.exit(1); });
"""


def test_a_body_at_the_limit_is_read_by_the_typescript_client(
    web_daemon: tuple[Daemon, str],
    typescript_build: Path,  # noqa: F811
    node_env: dict[str, str],  # noqa: F811
    thread_id: str,
) -> None:
    daemon, _ = web_daemon
    written = asyncio.run(write_at_the_limit(daemon.target, thread_id))
    index = TS_DIR / "dist" / "src" / "index.js"
    node = subprocess.run(
        ["node", "-e", NODE_READER, str(index)],
        env={**node_env, "TURNSTORE_TARGET": daemon.target, "TURNSTORE_THREAD": thread_id},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert node.returncode == 0, node.stderr
    (turn,) = json.loads(node.stdout)["turns"]
    assert turn["events"] == written


@pytest.mark.timeout(1200)
def test_a_body_at_the_limit_is_read_by_the_rust_client(
    web_daemon: tuple[Daemon, str],
    interop_program: Path,  # noqa: F811
    thread_id: str,
) -> None:
    """Through the EventStore trait: serde_json parses the body and agent-sdk's
    AgentEvent takes it (its ``input`` holds the nesting)."""
    daemon, _ = web_daemon
    written = asyncio.run(write_at_the_limit(daemon.target, thread_id))
    (turn,) = _interop(interop_program, ["read", daemon.target, thread_id])["turns"]
    assert len(turn["events"]) == 3
    deep = turn["events"][1]
    assert deep["input"] == written[1]["input"]
    assert json_depth({k: v for k, v in deep.items() if k != "type"}) == LIMIT


# -- bodies an older version stored deeper --------------------------------------------


def store_as_an_older_version(data_dir: Path, thread: str) -> None:
    """Write turn 1 straight through the engine, as a version without the limit did:
    an event, one 300 levels deep (past orjson's writing limit of 254), another;
    and a JSON snapshot as deep under the thread's id as key."""
    bodies = [b'{"delta":"before"}', deep_bytes(300), b'{"delta":"after"}']
    events = []
    for n, body in enumerate(bodies):
        message = pb.EventEnvelope(
            event_id=str(uuid.uuid4()),
            type="text_delta",
            timestamp="2026-01-01T00:00:00Z",
            content_type="application/json",
            body=body,
        )
        events.append(NewEvent(message.event_id, message.SerializeToString()))
        assert n < 3
    engine = LmdbEngine.open(EngineConfig(data_dir))
    try:
        engine.append(thread, 1, events, finish=True).result(timeout=30)
        engine.save_snapshot(thread, deep_bytes(300), "application/json").result(timeout=30)
    finally:
        engine.close()


async def test_a_deep_body_stored_earlier_does_not_poison_its_readers(
    tmp_path: Path, http: aiohttp.ClientSession, start_daemon: DaemonStarter
) -> None:
    thread = "old-and-deep"
    data_dir = tmp_path / "data"
    store_as_an_older_version(data_dir, thread)
    daemon = start_daemon("lmdb", "--http-listen", "127.0.0.1:0", data_dir=data_dir, start=False)
    base = daemon.start()["http"]
    try:
        # SSE delivers all three; the deep one as body_error (the events around it too).
        stream = await open_stream(http, thread_url(base, thread, "events?follow=0"))
        events = await stream.rest()
        data = [event.json() for event in events if event.name == "message"]
        assert [e.get("delta") for e in data] == ["before", None, "after"]
        assert NAMED in data[1]["body_error"]
        assert data[1]["raw_body"].startswith('{"a":{"a":')
        assert any(event.name == "turn_finished" for event in events)

        response = await http.get(thread_url(base, thread, "turns"))
        assert response.status == 200, await response.text()
        (turn,) = strict_json(await response.text())["turns"]
        assert [e.get("delta") for e in turn["events"]] == ["before", None, "after"]
        assert NAMED in turn["events"][1]["body_error"]

        response = await http.get(f"{base}/v1/conversations/{thread}")
        assert response.status == 200, await response.text()
        snapshot = strict_json(await response.text())
        assert snapshot["snapshot"] is None and NAMED in snapshot["body_error"]

        tail = await asyncio.to_thread(
            run_cli, "tail", thread, "--target", daemon.target, "--format", "json"
        )
        assert tail.returncode == 0, tail.stderr
        tailed = [line for line in json_lines(tail.stdout) if "event_id" in line]
        assert [e.get("delta") for e in tailed] == ["before", None, "after"]
        assert "body_base64" in tailed[1]

        exported = await asyncio.to_thread(run_cli, "export", "--target", daemon.target)
        assert exported.returncode == 0, exported.stderr
        lines = [line for line in json_lines(exported.stdout) if line["kind"] == "event"]
        assert [("event" in line, "envelope" in line) for line in lines] == [
            (True, False),
            (False, True),  # kept exactly, in base64
            (True, False),
        ]

        turns = await asyncio.to_thread(
            run_cli, "turns", thread, "--events", "--target", daemon.target, "--format", "json"
        )
        assert "Traceback" not in turns.stderr and "RecursionError" not in turns.stderr
        assert turns.returncode in (0, 2), turns.stderr
    finally:
        assert daemon.stop() == 0, daemon.log_lines[-20:]


# -- snapshots labelled JSON ------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b'{"v":NaN}', "not strict JSON"),
        (b"[Infinity]", "not strict JSON"),
        (b'{"s":"\\ud800"}', "not strict JSON"),
        (b'{"messages":[1,2', "not strict JSON"),
        (b"", "not strict JSON"),
        (b'{"s":"\xff"}', "not strict JSON"),
        (deep_bytes(LIMIT + 1), NAMED),
        (deep_bytes(2_000), NAMED),
    ],
)
@pytest.mark.parametrize(
    "content_type", ["", "application/json", "Application/JSON; charset=utf-8"]
)
async def test_a_snapshot_labelled_json_is_checked_as_strictly_as_events(
    backend_daemon: Daemon, data: bytes, says: str, content_type: str
) -> None:
    key = f"conversation-{uuid.uuid4()}"
    async with grpc.aio.insecure_channel(backend_daemon.target) as channel:
        stub = pb_grpc.HistoryStoreServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Save(pb.SaveRequest(key=key, data=data, content_type=content_type))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says in (raised.value.details() or "")
        loaded = await stub.Load(pb.LoadRequest(key=key))
        assert not loaded.HasField("snapshot")
        # The same bytes under another label are the caller's business.
        await stub.Save(pb.SaveRequest(key=key, data=data, content_type="application/x-thing"))
        at_limit = deep_bytes(LIMIT)
        await stub.Save(pb.SaveRequest(key=key, data=at_limit, content_type=content_type))
        loaded = await stub.Load(pb.LoadRequest(key=key))
        assert loaded.snapshot.data == at_limit


# -- the same refusals on both backends -------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain\x00evil", "\x00", "application/x\x00"])
async def test_a_content_type_with_a_nul_is_refused_on_both_backends(
    backend_daemon: Daemon, thread_id: str, content_type: str
) -> None:
    async with grpc.aio.insecure_channel(backend_daemon.target) as channel:
        history = pb_grpc.HistoryStoreServiceStub(channel)
        key = f"conversation-{uuid.uuid4()}"
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await history.Save(pb.SaveRequest(key=key, data=b"x", content_type=content_type))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "content_type" in (raised.value.details() or "")
        events = pb_grpc.EventStoreServiceStub(channel)
        envelope = pb.EventEnvelope(event_id="e", type="x", content_type=content_type, body=b"{}")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await events.Append(pb.AppendRequest(thread_id=thread_id, turn=1, events=[envelope]))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "content_type" in (raised.value.details() or "")
        # The daemon is fine afterwards.
        await history.Save(pb.SaveRequest(key=key, data=b"x", content_type="text/plain"))


# -- the AppendStream wire scan ---------------------------------------------------------


def stream_message_with_more_nested(depth: int, padding: int) -> bytes:
    """An AppendStreamRequest whose ``more`` (field 6) holds an item ``depth`` deep,
    padded with an unknown field so that it is scanned item by item."""
    item: bytes = pb.AppendStreamRequest(
        request_id=1, thread_id="deep-more", turn=1
    ).SerializeToString()
    inner = b""
    for _ in range(depth):
        inner = field_bytes(6, item + inner)
    return item + inner + field_bytes(1000, b"p" * padding)


@pytest.mark.parametrize("depth", [5_000, 3_000, 150])
@pytest.mark.parametrize("padding", [0, 1 << 20])
async def test_more_nested_thousands_deep_is_an_invalid_argument(
    daemon: Daemon, depth: int, padding: int
) -> None:
    message = stream_message_with_more_nested(depth, padding)
    async with connect(daemon) as wire:
        code, acks, details = await wire.send_stream(APPEND_STREAM, [message])
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        assert code == invalid or [a.error.reason for a in acks] == ["invalid_argument"], (
            code,
            details,
            acks,
        )
        await wire.check_alive()


# -- import of hostile lines --------------------------------------------------------------

HEADER: Final = b'{"kind":"header","format":"turnstore-export","version":1}\n'


def event_line(thread: str, body_levels: int) -> bytes:
    event = {
        "event_id": str(uuid.uuid4()),
        "sequence": 0,
        "timestamp": "2026-01-01T00:00:00Z",
        **deep_event(body_levels),
    }
    record = {"kind": "event", "thread_id": thread, "turn": 1, "position": 0, "event": event}
    return json.dumps(record).encode() + b"\n"


def import_file(daemon: Daemon, path: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("import", "--input", str(path), "--target", daemon.target)


async def test_import_of_a_line_nested_1000_deep_fails_cleanly_naming_it(
    daemon: Daemon, tmp_path: Path, thread_id: str
) -> None:
    deep = tmp_path / "deep.jsonl"
    hostile = b'{"kind":"event","thread_id":"x","event":' + deep_bytes(1_000) + b"}\n"
    deep.write_bytes(HEADER + event_line(thread_id, 3) + hostile + event_line(thread_id, 3))
    done = await asyncio.to_thread(import_file, daemon, deep)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "line 3" in done.stderr and "65 levels" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "RecursionError" not in done.stderr

    # Deep, unclosed and full of quotes: refused as quickly.
    unclosed = tmp_path / "unclosed.jsonl"
    unclosed.write_bytes(HEADER + b"[" * 70 + b'"' + b'\\"' * 200_000 + b"\n")
    done = await asyncio.to_thread(import_file, daemon, unclosed)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "line 2" in done.stderr and "Traceback" not in done.stderr, done.stderr

    # At the limit is imported.
    fine = tmp_path / "fine.jsonl"
    fine.write_bytes(HEADER + event_line(thread_id, LIMIT))
    done = await asyncio.to_thread(import_file, daemon, fine)
    assert done.returncode == 0, done.stderr
    async with TurnstoreClient(daemon.target) as client:
        turn = await client.events.get_turn(thread_id, 1)
        assert turn is not None
        assert json_depth(turn.events[-1].event["input"]) == LIMIT - 1


MEASURED_IMPORT: Final = """
import sys
from turnstore.cli.main import main
try:
    status = main(sys.argv[1:])
finally:
    # VmHWM, not ru_maxrss: the latter keeps the high-water mark of the
    # process it was forked from (pytest, hundreds of MiB in a full run).
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
    print("MAXRSS_KIB", hwm, file=sys.stderr)
raise SystemExit(status)
"""


def test_import_of_a_200_mb_line_is_refused_in_bounded_memory(
    daemon: Daemon, tmp_path: Path
) -> None:
    huge = tmp_path / "huge.jsonl"
    with huge.open("wb") as out:
        out.write(HEADER)
        out.write(b'{"kind":"snapshot","key":"k","version":1,"content_type":"","data_base64":"')
        chunk = b"A" * (1 << 20)
        for _ in range(200):
            out.write(chunk)
        out.write(b'"}\n')
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            MEASURED_IMPORT,
            "import",
            "--input",
            str(huge),
            "--target",
            daemon.target,
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
        check=False,
    )
    huge.unlink()
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "line 2" in done.stderr and "longer than" in done.stderr, done.stderr
    peak_mib = int(done.stderr.split("MAXRSS_KIB")[1].split()[0]) / 1024
    # The line bound is 64 MiB: the reader holds at most about that, never the line.
    assert peak_mib < 320, peak_mib
