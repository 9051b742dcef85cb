"""Reads cost what they return: a small request never makes the daemon allocate far more.

Against real daemons (both backends), each read the issue found amplifying
is made while the daemon's resident memory (VmRSS from /proc/PID/status,
sampled every few milliseconds) is watched and gRPC health is checked over
the Unix socket. Each must grow the daemon by less than three times what it
returns plus 64 MiB, with every health check answered within a second:

- ``GET /v1/conversations/K`` of a 32 MiB JSON snapshot of ``[{},{},...]``,
  four at once (it was parsed and re-encoded: 137 -> 1,141 MB for one);
- ``GET /v1/threads/{id}/turns?limit=1000`` on a thread of about 100 MiB:
  one page of bounded bytes with a cursor, and the pages together hold
  every event once (it returned the whole thread: +1.2 GB for 300 MB);
- ``GetTurn`` of a turn larger than a response can carry: refused before
  it is read, naming the paged reads (it read 100 MB and built +540 MB
  before failing with RESOURCE_EXHAUSTED);
- eight concurrent ``ListVersions`` of a key with four 32 MiB versions
  (each loaded every version: 107 -> 715 MB);
- sixteen clients listing ``order=recent`` over 20,000 threads ten times
  each while a tiny ``GetTurn`` is timed (each listing scanned every thread
  and the read pool was theirs: 5.2 s for the GetTurn over 100k threads).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp
import grpc
import lmdb
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.daemon import Daemon, DaemonStarter
from turnstore import AgentEventEnvelope, ResourceExhaustedError, TurnstoreClient
from turnstore.server.api import readcost
from turnstore.server.storage import records
from turnstore.server.storage.lmdb import schema
from turnstore.server.storage.values import StoredSnapshot, TurnChunk
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

T = TypeVar("T")

MIB: Final = 1 << 20
HEALTH_BOUND_SECONDS: Final = 1.0
CALL_TIMEOUT: Final = 240.0
CHANNEL_OPTIONS: Final = [
    ("grpc.max_send_message_length", 128 * MIB),
    ("grpc.max_receive_message_length", 128 * MIB),
]
# A JSON array of empty objects just under the 32 MiB snapshot limit.
SNAPSHOT: Final = b"[{}" + b",{}" * ((32 * MIB - 4) // 3) + b"]"
# An event body of about 1,000,000 bytes (the limit is 1 MiB per envelope).
BLOB: Final = "x" * 1_000_000


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc status")


class Cost:
    """What a read cost the daemon: peak VmRSS growth and the slowest health check."""

    def __init__(self) -> None:
        self.baseline_kib = 0
        self.peak_kib = 0
        self.health_seconds: list[float] = []
        self.health_failures: list[str] = []

    @property
    def growth_bytes(self) -> int:
        return (self.peak_kib - self.baseline_kib) * 1024

    @property
    def slowest_health(self) -> float:
        return max(self.health_seconds, default=float("inf"))

    def __repr__(self) -> str:
        return (
            f"Cost(growth={self.growth_bytes / MIB:.1f} MiB from {self.baseline_kib / 1024:.0f}, "
            f"slowest health={self.slowest_health:.3f} s over {len(self.health_seconds)} "
            f"checks, failures={self.health_failures})"
        )


async def measured(daemon: Daemon, call: Callable[[], Awaitable[T]]) -> tuple[T, Cost]:
    """Run ``call`` while sampling the daemon's VmRSS and checking its health (own threads)."""
    assert daemon.process is not None
    pid = daemon.process.pid
    cost = Cost()
    cost.baseline_kib = cost.peak_kib = vm_rss_kib(pid)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            cost.peak_kib = max(cost.peak_kib, vm_rss_kib(pid))

    def check_health() -> None:
        with grpc.insecure_channel(daemon.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                started = time.perf_counter()
                try:
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_BOUND_SECONDS)
                except grpc.RpcError as error:
                    cost.health_failures.append(str(error.code()))
                cost.health_seconds.append(time.perf_counter() - started)
                if done.wait(0.01):  # pacing, not synchronisation
                    return

    threads = [threading.Thread(target=task, daemon=True) for task in (sample, check_health)]
    for thread in threads:
        thread.start()
    try:
        result = await asyncio.wait_for(call(), CALL_TIMEOUT)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    cost.peak_kib = max(cost.peak_kib, vm_rss_kib(pid))
    return result, cost


def assert_costs_what_it_returns(cost: Cost, returned_bytes: int) -> None:
    assert not cost.health_failures, cost
    assert cost.slowest_health < HEALTH_BOUND_SECONDS, cost
    assert cost.growth_bytes < 3 * returned_bytes + 64 * MIB, (cost, returned_bytes)


def start(
    start_daemon: DaemonStarter, backend: str, data_dir: Path | None = None
) -> tuple[Daemon, str]:
    """A daemon of ``backend`` with the HTTP API on, and its base URL."""
    daemon = start_daemon(backend, "--http-listen", "127.0.0.1:0", data_dir=data_dir)
    return daemon, str(daemon.serving["http"])


@asynccontextmanager
async def stubs(daemon: Daemon) -> AsyncIterator[tuple[Any, Any]]:
    async with grpc.aio.insecure_channel(daemon.target, options=CHANNEL_OPTIONS) as channel:
        yield pb_grpc.EventStoreServiceStub(channel), pb_grpc.HistoryStoreServiceStub(channel)


async def save(daemon: Daemon, key: str, data: bytes, versions: int = 1) -> None:
    async with stubs(daemon) as (_, history):
        for _ in range(versions):
            await history.Save(
                pb.SaveRequest(key=key, data=data, content_type="application/json"),
                timeout=CALL_TIMEOUT,
            )


async def test_snapshot_reads_stream_the_stored_bytes(
    backend: str, start_daemon: DaemonStarter
) -> None:
    daemon, base = start(start_daemon, backend)
    try:
        await save(daemon, "big", SNAPSHOT)
        await save(daemon, "warm", b"[{}]")
        async with aiohttp.ClientSession() as session:

            async def get(key: str = "big") -> bytes:
                async with session.get(f"{base}/v1/conversations/{key}") as response:
                    assert response.status == 200
                    assert response.content_type == "application/json"
                    return await response.read()

            await get("warm")  # lazy allocations of a first read are not the cost
            small_reads: list[float] = []

            async def four_at_once() -> list[bytes]:
                async with TurnstoreClient(daemon.target) as client:
                    await client.events.append("tiny", 1, AgentEventEnvelope.new({"type": "t"}))
                    bodies = asyncio.gather(*(get() for _ in range(4)))
                    while not bodies.done():
                        started = time.perf_counter()
                        assert await client.events.get_turn("tiny", 1) is not None
                        small_reads.append(time.perf_counter() - started)
                        await asyncio.wait((bodies,), timeout=0.01)  # pacing
                    return list(await bodies)

            bodies, cost = await measured(daemon, four_at_once)
        returned = sum(map(len, bodies))
        assert_costs_what_it_returns(cost, returned)
        assert small_reads and max(small_reads) < 1.0, small_reads
        for body in bodies:
            assert body == bodies[0]
        parsed = orjson.loads(bodies[0])
        assert parsed["key"] == "big"
        assert parsed["version"] == 1
        assert parsed["content_type"] == "application/json"
        assert len(parsed["snapshot"]) == (len(SNAPSHOT) - 1) // 3
        print(f"4 concurrent snapshot GETs: {cost}, returned {returned / MIB:.0f} MiB")
    finally:
        assert daemon.stop() == 0, daemon.log_lines[-20:]


async def test_grpc_loads_copy_the_snapshot_about_once(
    backend: str, start_daemon: DaemonStarter
) -> None:
    """Load answers with wire bytes joined around the stored data (no message built)."""
    daemon, _ = start(start_daemon, backend)
    try:
        await save(daemon, "big", SNAPSHOT)
        await save(daemon, "warm", b"[{}]")
        async with stubs(daemon) as (_, history):
            await history.Load(pb.LoadRequest(key="warm"), timeout=CALL_TIMEOUT)

            async def four_at_once() -> list[Any]:
                request = pb.LoadRequest(key="big")
                calls = (history.Load(request, timeout=CALL_TIMEOUT) for _ in range(4))
                return list(await asyncio.gather(*calls))

            answers, cost = await measured(daemon, four_at_once)
        returned = sum(answer.ByteSize() for answer in answers)
        assert_costs_what_it_returns(cost, returned)
        for answer in answers:
            assert answer.found
            assert answer.snapshot.version == 1
            assert answer.snapshot.content_type == "application/json"
            assert answer.snapshot.saved_at_unix_nanos > 0
            assert answer.snapshot.data == SNAPSHOT
        print(f"4 concurrent gRPC Loads: {cost}, returned {returned / MIB:.0f} MiB")
    finally:
        assert daemon.stop() == 0, daemon.log_lines[-20:]


async def test_non_json_and_small_snapshots_are_answered_as_before(
    backend: str, start_daemon: DaemonStarter
) -> None:
    daemon, base = start(start_daemon, backend)
    try:
        async with stubs(daemon) as (_, history):
            for key, data, content_type in (
                ("text", b"not json at all", "text/plain"),
                ("json-text", b'{"a": [1, 2]}', "text/plain"),
                ("small", b' {"messages": [], "pinned": []} ', "application/json; charset=utf-8"),
            ):
                request = pb.SaveRequest(key=key, data=data, content_type=content_type)
                await history.Save(request, timeout=CALL_TIMEOUT)
        async with aiohttp.ClientSession() as session:

            async def get(key: str) -> dict[str, Any]:
                async with session.get(f"{base}/v1/conversations/{key}") as response:
                    assert response.status == 200
                    parsed: dict[str, Any] = orjson.loads(await response.read())
                    return parsed

            text = await get("text")
            assert text["snapshot"] is None
            assert text["raw_body"] == "not json at all"
            assert "body_error" in text
            assert (await get("json-text"))["snapshot"] == {"a": [1, 2]}
            assert (await get("small"))["snapshot"] == {"messages": [], "pinned": []}
            async with session.get(f"{base}/v1/conversations/none") as response:
                assert response.status == 404
    finally:
        assert daemon.stop() == 0, daemon.log_lines[-20:]


async def test_large_turns_are_paged_by_bytes_and_too_large_ones_refused_unread(
    backend: str, start_daemon: DaemonStarter
) -> None:
    """A thread of one 70 MB turn (over the 63 MiB a GetTurn answer may hold) and 30 MB more."""
    daemon, base = start(start_daemon, backend)
    thread = "big-thread"
    expected: dict[int, list[str]] = {}
    try:
        async with TurnstoreClient(daemon.target) as client:
            for turn, events in ((1, 70), *((turn, 2) for turn in range(2, 17))):
                for first in range(0, events, 8):
                    envelopes = [
                        AgentEventEnvelope.new({"type": "blob", "blob": BLOB}, n)
                        for n in range(first, min(events, first + 8))
                    ]
                    await client.events.append_many(thread, turn, envelopes)
                    expected.setdefault(turn, []).extend(e.event_id for e in envelopes)
            await client.events.finish_turn(thread, 1)
            await client.events.append("small", 1, AgentEventEnvelope.new({"type": "t"}))
            assert (await client.events.get_turn("small", 1)) is not None  # warm

            async def refused() -> str:
                with pytest.raises(ResourceExhaustedError) as raised:
                    await client.events.get_turn(thread, 1)
                return str(raised.value)

            message, cost = await measured(daemon, refused)
            assert_costs_what_it_returns(cost, 0)
            assert "ListTurns" in message and "ReadEvents" in message, message
            print(f"GetTurn of a 70 MB turn refused: {cost}")
            # A turn that fits is still answered whole.
            turn_two = await client.events.get_turn(thread, 2)
            assert turn_two is not None
            assert [e.event_id for e in turn_two.events] == expected[2]

        async with aiohttp.ClientSession() as session:

            async def page(query: str) -> bytes:
                url = f"{base}/v1/threads/{thread}/turns?limit=1000{query}"
                async with session.get(url) as response:
                    assert response.status == 200
                    return await response.read()

            first_page, cost = await measured(daemon, lambda: page(""))
            assert_costs_what_it_returns(cost, len(first_page))
            assert len(first_page) < 16 * MIB, len(first_page)
            print(f"turns?limit=1000 on a 100 MB thread: {cost}, page {len(first_page)} bytes")

            seen: dict[int, list[str]] = {}
            body = orjson.loads(first_page)
            pages = 1
            while True:
                for entry in body["turns"]:
                    seen.setdefault(entry["turn"], []).extend(
                        event["event_id"] for event in entry["events"]
                    )
                if body["next_from_turn"] is None:
                    break
                query = f"&from_turn={body['next_from_turn']}"
                if body["next_after_position"] is not None:
                    query += f"&after_position={body['next_after_position']}"
                body = orjson.loads(await page(query))
                pages += 1
            assert seen == expected
            assert pages >= 20
    finally:
        assert daemon.stop() == 0, daemon.log_lines[-20:]


async def test_listing_versions_never_reads_their_data(
    backend: str, start_daemon: DaemonStarter
) -> None:
    daemon, _ = start(start_daemon, backend)
    try:
        await save(daemon, "kept", SNAPSHOT, versions=4)
        await save(daemon, "warm", b"[{}]")
        async with stubs(daemon) as (_, history):
            request = pb.ListVersionsRequest(key="kept")
            warm = pb.ListVersionsRequest(key="warm")
            await history.ListVersions(warm, timeout=CALL_TIMEOUT)  # lazy allocations

            async def eight_at_once() -> list[Any]:
                calls = (history.ListVersions(request, timeout=CALL_TIMEOUT) for _ in range(8))
                return list(await asyncio.gather(*calls))

            answers, cost = await measured(daemon, eight_at_once)
        returned = sum(answer.ByteSize() for answer in answers)
        assert_costs_what_it_returns(cost, returned)
        for answer in answers:
            assert [v.version for v in answer.versions] == [4, 3, 2, 1]
            assert {v.size_bytes for v in answer.versions} == {len(SNAPSHOT)}
            assert {v.content_type for v in answer.versions} == {"application/json"}
        print(f"8 concurrent ListVersions: {cost}")
    finally:
        assert daemon.stop() == 0, daemon.log_lines[-20:]


THREADS: Final = 20_000
LISTINGS_EACH: Final = 10


async def test_recent_listings_do_not_scan_every_thread_or_starve_small_reads(
    backend: str, start_daemon: DaemonStarter
) -> None:
    daemon, base = start(start_daemon, backend)
    try:
        async with TurnstoreClient(daemon.target) as client:
            names = [f"thread-{n:05d}" for n in range(THREADS)]
            for start_index in range(0, THREADS, 500):
                await asyncio.gather(
                    *(
                        client.events.append(name, 1, AgentEventEnvelope.new({"type": "t"}))
                        for name in names[start_index : start_index + 500]
                    )
                )
            # Written last: the newest three, newest first.
            for name in ("thread-00007", "thread-00003", "thread-00005"):
                await client.events.append(name, 2, AgentEventEnvelope.new({"type": "t"}))
            async with aiohttp.ClientSession() as session:

                async def recent(limit: int) -> list[dict[str, Any]]:
                    url = f"{base}/v1/threads?order=recent&limit={limit}"
                    async with session.get(url) as response:
                        assert response.status == 200
                        threads: list[dict[str, Any]] = orjson.loads(await response.read())[
                            "threads"
                        ]
                        return threads

                top = await recent(3)
                assert [t["thread_id"] for t in top] == [
                    "thread-00005",
                    "thread-00003",
                    "thread-00007",
                ]
                assert top[0]["event_count"] == 2
                listed = await recent(1000)
                assert len(listed) == 1000
                stamps = [t["last_write_unix_nanos"] for t in listed]
                assert stamps == sorted(stamps, reverse=True)

                small_reads: list[float] = []

                async def listings_and_a_small_read() -> None:
                    stop = asyncio.Event()

                    async def listers() -> None:
                        async def lister() -> None:
                            for _ in range(LISTINGS_EACH):
                                await recent(200)

                        await asyncio.gather(*(lister() for _ in range(16)))
                        stop.set()

                    async def small() -> None:
                        while not stop.is_set():
                            started = time.perf_counter()
                            assert await client.events.get_turn("thread-00001", 1) is not None
                            small_reads.append(time.perf_counter() - started)
                            await asyncio.sleep(0.01)  # pacing, not synchronisation

                    await asyncio.gather(small(), listers())

                _, cost = await measured(daemon, listings_and_a_small_read)
        assert_costs_what_it_returns(cost, 16 * LISTINGS_EACH * 200 * 200)
        assert small_reads and max(small_reads) < 1.0, (max(small_reads), len(small_reads))
        print(
            f"16 x {LISTINGS_EACH} recent listings over {THREADS} threads: {cost}, "
            f"slowest GetTurn {max(small_reads):.3f} s over {len(small_reads)}"
        )
    finally:
        assert daemon.stop() == 0, daemon.log_lines[-20:]


def downgrade_to_version_1(data_dir: Path) -> None:
    """Make a data directory look as schema version 1 wrote it.

    Version 1 had no ``threads_by_write`` and no ``snapshot_versions`` and
    its turn entries had no ``record_bytes``: empty the first two, cut the
    third back to 17 bytes, and write version 1.
    """
    env = lmdb.open(str(data_dir), max_dbs=len(schema.ALL_DATABASES), subdir=True)
    try:
        with env.begin(write=True) as txn:
            for name in (schema.THREADS_BY_WRITE, schema.SNAPSHOT_VERSIONS):
                txn.drop(env.open_db(name, txn=txn), delete=False)
            turns = env.open_db(schema.TURNS, txn=txn)
            legacy = [
                (bytes(key), bytes(value)[: schema.TURN_VALUE.size])
                for key, value in txn.cursor(db=turns)
            ]
            for key, value in legacy:
                txn.put(key, value, db=turns)
            meta = env.open_db(schema.META, txn=txn)
            txn.put(schema.META_SCHEMA_VERSION, schema.U64.pack(1), db=meta)
    finally:
        env.close()


async def test_a_version_1_data_directory_is_migrated_and_served(
    data_dir: Path, start_daemon: DaemonStarter
) -> None:
    """The recency index is built at open; old turns and versions are measured from their data."""
    daemon, _ = start(start_daemon, "lmdb", data_dir)
    try:
        async with TurnstoreClient(daemon.target) as client:
            for name in ("older", "old", "newest"):
                await client.events.append(name, 1, AgentEventEnvelope.new({"type": "t"}))
            for first in range(0, 70, 8):
                envelopes = [
                    AgentEventEnvelope.new({"type": "blob", "blob": BLOB}, n)
                    for n in range(first, min(70, first + 8))
                ]
                await client.events.append_many("big", 1, envelopes)
        await save(daemon, "kept", b"[1]", versions=2)
    finally:
        assert daemon.stop() == 0, daemon.log_lines[-20:]
    downgrade_to_version_1(data_dir)

    daemon, base = start(start_daemon, "lmdb", data_dir)
    try:
        async with TurnstoreClient(daemon.target) as client:
            await client.events.append("older", 2, AgentEventEnvelope.new({"type": "t"}))
            with pytest.raises(ResourceExhaustedError):
                await client.events.get_turn("big", 1)
        async with stubs(daemon) as (_, history):
            listed = await history.ListVersions(pb.ListVersionsRequest(key="kept"))
            assert [(v.version, v.size_bytes) for v in listed.versions] == [(2, 3), (1, 3)]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{base}/v1/threads?order=recent&limit=3") as response,
        ):
            threads = orjson.loads(await response.read())["threads"]
        assert [t["thread_id"] for t in threads] == ["older", "big", "newest"]
    finally:
        assert daemon.stop() == 0, daemon.log_lines[-20:]
    env = lmdb.open(str(data_dir), max_dbs=len(schema.ALL_DATABASES), subdir=True, readonly=True)
    try:
        with env.begin() as txn:
            meta = env.open_db(schema.META, txn=txn, create=False)
            stored = txn.get(schema.META_SCHEMA_VERSION, db=meta)
            assert stored is not None and schema.U64.unpack(stored)[0] == schema.SCHEMA_VERSION
    finally:
        env.close()


@pytest.mark.parametrize("turn", [0, 1, 300, (1 << 64) - 1])
@pytest.mark.parametrize("finished", [False, True])
@pytest.mark.parametrize("events", [0, 1, 3])
def test_get_turn_answers_are_the_generated_encoding(
    turn: int, finished: bool, events: int
) -> None:
    stored = records.encode_batch(5, turn, 1_700_000_000_000_000_000, [b"\x22\x01t"] * events)
    wire = readcost.get_turn_response(TurnChunk(turn, finished, stored))
    decoded = pb.GetTurnResponse.FromString(wire)
    assert decoded.found
    assert decoded.turn.turn == turn
    assert decoded.turn.finished == finished
    assert [e.position for e in decoded.turn.events] == list(range(5, 5 + events))
    assert readcost.get_turn_response(None) == pb.GetTurnResponse(found=False).SerializeToString()


@pytest.mark.parametrize("saved_at", [0, 1, 1_700_000_000_000_000_000, -5])
@pytest.mark.parametrize("data", [b"", b"[1]", b"x" * 300])
@pytest.mark.parametrize("content_type", ["", "application/json", "text/plain; charset=é"])
def test_load_answers_are_the_generated_encoding(
    saved_at: int, data: bytes, content_type: str
) -> None:
    wire = readcost.load_response(StoredSnapshot(7, content_type, data, saved_at))
    expected = pb.LoadResponse(
        found=True,
        snapshot=pb.Snapshot(
            version=7, content_type=content_type, data=data, saved_at_unix_nanos=saved_at
        ),
    )
    assert pb.LoadResponse.FromString(wire) == expected
    assert readcost.load_response(None) == pb.LoadResponse(found=False).SerializeToString()
