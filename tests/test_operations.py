"""Operations against real daemons: stats, backup, listings, export and import.

The commands run as ``python -m turnstore.cli.admin`` subprocesses (the same
code ``turnstore backup|stats|export|import`` runs); what they did is checked
through the client and through a second daemon started on the result.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.daemon import Daemon, DaemonStarter
from tests.test_follower_budget import scrape
from turnstore import (
    AgentEventEnvelope,
    ConversationSnapshot,
    StoredEvent,
    TurnFinished,
    TurnstoreClient,
)
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

THREAD_A = "alpha"
THREAD_B = "interleaved-β"
THREAD_RAW = "raw thread"


async def admin_cli(
    *args: str, stdin: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m turnstore.cli.admin ARGS`` without blocking the event loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "turnstore.cli.admin",
        *args,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode is not None
    return subprocess.CompletedProcess(list(args), process.returncode, out, err)


@pytest.fixture
def fresh(data_dir: Path, start_daemon: DaemonStarter) -> Iterator[Daemon]:
    """A daemon of its own, on an empty data directory."""
    daemon = start_daemon(data_dir=data_dir)
    yield daemon
    assert daemon.stop() == 0, daemon.log_lines


@pytest.fixture
async def raw(fresh: Daemon) -> AsyncIterator[grpc.aio.Channel]:
    """A plain channel to the fresh daemon, for calls the client does not make."""
    async with grpc.aio.insecure_channel(fresh.target) as channel:
        yield channel


def event(n: int, text: str = "x") -> AgentEventEnvelope:
    return AgentEventEnvelope(
        f"id-{n}-{text}",
        n,
        f"2024-01-01T00:00:{n % 60:02d}Z",
        {
            "type": "text_delta",
            "delta": text,
        },
    )


def snapshot(text: str) -> ConversationSnapshot:
    return ConversationSnapshot([{"role": "user", "content": text}], [False])


async def populate(client: TurnstoreClient) -> None:
    """Known content: 2 threads, 10 events, 6 turns (4 finished), 2 conversations, 7 versions.

    ``alpha``: turns 1 and 2 finished, turn 3 not. ``interleaved-β``: turns 1
    and 2 interleaved, turn 2 finished between turn 1's events, and an empty
    finished turn 5. ``conv-a`` saved 3 times, ``conv-b`` 6 times (4 kept),
    ``conv-gone`` saved and deleted.
    """
    events = client.events
    await events.append_many(THREAD_A, 1, [event(0), event(1), event(2)])
    await events.finish_turn(THREAD_A, 1)
    await events.append_many(THREAD_A, 2, [event(3), event(4)])
    await events.finish_turn(THREAD_A, 2)
    await events.append(THREAD_A, 3, event(5, "unfinished ü"))
    await events.append(THREAD_B, 1, event(10))
    await events.append(THREAD_B, 2, event(11))
    await events.append(THREAD_B, 1, event(12))
    await events.finish_turn(THREAD_B, 2)
    await events.append(THREAD_B, 1, event(13))
    await events.finish_turn(THREAD_B, 5)
    for n in range(3):
        await client.history("conv-a").save(snapshot(f"a{n}"))
    for n in range(6):
        await client.history("conv-b").save(snapshot(f"b{n}"))
    await client.history("conv-gone").save(snapshot("gone"))
    await client.history("conv-gone").delete()


async def thread_dump(client: TurnstoreClient, thread_id: str) -> list[tuple[Any, ...]]:
    """A thread's history as a replay tells it: events and finishes, in order."""
    items: list[tuple[Any, ...]] = []
    # decode=False: the StoredEvent messages, bodies byte for byte as stored.
    async with client.events.replay(thread_id, decode=False) as replay:
        async for item in replay:
            if isinstance(item, StoredEvent):
                assert item.message is not None
                envelope = item.message.envelope.SerializeToString()
                items.append(("event", item.position, item.turn, envelope))
            elif isinstance(item, TurnFinished):
                items.append(("finished", item.turn, item.event_count, item.last_position))
    async with grpc.aio.insecure_channel(client.target) as channel:
        stub = pb_grpc.EventStoreServiceStub(channel)
        async for message in stub.ListTurns(pb.ListTurnsRequest(thread_id=thread_id)):
            turn = message.turn
            positions = [e.position for e in turn.events]
            items.append(("turn", turn.turn, turn.finished, positions))
    return items


async def snapshot_dump(target: str, key: str) -> list[tuple[int, str, bytes]]:
    """Every kept version of a key: (version, content type, data), newest first."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.HistoryStoreServiceStub(channel)
        listed = await stub.ListVersions(pb.ListVersionsRequest(key=key))
        out = []
        for version in listed.versions:
            loaded = await stub.Load(pb.LoadRequest(key=key, version=version.version))
            assert loaded.found
            snap = loaded.snapshot
            out.append((snap.version, snap.content_type, snap.data))
        return out


# -- stats -------------------------------------------------------------------------


async def test_stats_count_what_the_daemon_holds(fresh: Daemon, data_dir: Path) -> None:
    async with TurnstoreClient(fresh.target) as client:
        empty = await client.admin.stats()
        assert (empty.threads, empty.events, empty.conversations) == (0, 0, 0)
        await populate(client)
        stats = await client.admin.stats()
    assert stats.threads == 2
    assert stats.events == 10
    assert stats.turns == 6
    assert stats.finished_turns == 4
    assert stats.conversations == 2
    assert stats.snapshot_versions == 7
    assert stats.data_file_bytes == (data_dir / "data.mdb").stat().st_size
    assert stats.map_size_bytes >= stats.data_file_bytes
    assert not stats.retention_enabled

    piped = await admin_cli("stats", "--target", fresh.target)
    assert piped.returncode == 0, piped.stderr
    printed = json.loads(piped.stdout)
    assert printed == stats.to_json_dict()

    text = await admin_cli("stats", "--target", fresh.target, "--format", "text")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.decode().splitlines()
    assert "threads        2" in lines
    assert "turns          6 (4 finished)" in lines
    assert "conversations  2 (7 versions stored)" in lines
    assert any(line.startswith("retention      off") for line in lines)


async def test_stats_and_metrics_on_postgresql_say_there_is_no_limit(
    start_daemon: Callable[..., Daemon],
) -> None:
    daemon = start_daemon("postgres", "--metrics-listen", "127.0.0.1:0")
    metrics = json.loads(daemon.log_lines[0])["metrics"]
    async with TurnstoreClient(daemon.target) as client:
        await populate(client)
        stats = await client.admin.stats()
        follower = client.events.replay(THREAD_A, follow=True)
        assert isinstance(await anext(aiter(follower)), StoredEvent)
        gauges = await asyncio.to_thread(scrape, metrics)
        await follower.aclose()
    assert (stats.threads, stats.events, stats.turns, stats.finished_turns) == (2, 10, 6, 4)
    assert (stats.conversations, stats.snapshot_versions) == (2, 7)
    assert (stats.max_db_bytes, stats.write_limit_bytes, stats.map_size_bytes) == (0, 0, 0)
    assert stats.used_bytes == stats.data_file_bytes > 0 and stats.used_fraction == 0.0
    text = await admin_cli("stats", "--target", daemon.target, "--format", "text")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.decode().splitlines()
    assert any(line.startswith("space") and "no write limit" in line for line in lines), lines
    assert any(line.startswith("data file") and "tables and indexes" in line for line in lines)
    # The followers' gauges, as on LMDB; no ceiling, so no gauge of one.
    assert gauges["turnstore_open_replays"] == 1
    assert "turnstore_follower_held_bytes" in gauges
    assert "turnstore_followers_ended_too_slow" in gauges
    assert gauges["turnstore_commit_writes_count"] > 0
    assert not any("max_db_bytes" in name or "write_limit" in name for name in gauges)


# -- backup ------------------------------------------------------------------------


async def test_a_backup_taken_while_writing_serves_the_same_data(
    tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    dest = tmp_path / "backups" / "first"
    dest.parent.mkdir()
    source = start_daemon("lmdb", "--backup-dir", str(dest.parent), data_dir=tmp_path / "source")
    async with TurnstoreClient(source.target) as client:
        await populate(client)
        stop = asyncio.Event()
        going = asyncio.Event()
        sent = acked = 0

        async def keep_writing() -> None:
            nonlocal sent, acked
            n = 0
            while not stop.is_set():
                turn = n // 10 + 1
                sent += 1
                await client.events.append("busy", turn, event(n, "busy"))
                acked += 1
                if n % 10 == 9:
                    await client.events.finish_turn("busy", turn)
                if acked == 25:
                    going.set()
                n += 1

        writer = asyncio.create_task(keep_writing())
        await asyncio.wait_for(going.wait(), 30)
        acked_before = acked
        result = await admin_cli("backup", dest.name, "--target", source.target)
        sent_before_answer = sent
        stop.set()
        await writer
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["dest_dir"] == str(dest)
        assert answer["bytes_written"] == (dest / "data.mdb").stat().st_size > 0
        # Nothing but the backup is left next to it.
        assert os.listdir(dest.parent) == ["first"]
        expected = {thread: await thread_dump(client, thread) for thread in (THREAD_A, THREAD_B)}
        busy_source = await client.events.get_turns("busy")
        busy_events = [e async for e in client.events.read_events("busy")]

    restored = start_daemon(data_dir=dest)
    try:
        async with TurnstoreClient(restored.target) as client:
            for thread, dump in expected.items():
                assert await thread_dump(client, thread) == dump
            for key in ("conv-a", "conv-b", "conv-gone"):
                assert await snapshot_dump(restored.target, key) == await snapshot_dump(
                    source.target, key
                )
            # The busy thread is cut at one commit: a prefix of what the source holds,
            # with every append acknowledged before the backup began.
            copied = [e async for e in client.events.read_events("busy")]
            assert acked_before <= len(copied) <= sent_before_answer
            assert [(e.position, e.turn, e.envelope) for e in copied] == [
                (e.position, e.turn, e.envelope) for e in busy_events[: len(copied)]
            ]
            source_turns = {turn.turn: turn for turn in busy_source}
            for turn in await client.events.get_turns("busy"):
                original = source_turns[turn.turn]
                assert original.events[: len(turn.events)] == turn.events
                if turn.finished:
                    assert original.finished and original.events == turn.events
            # The restored daemon goes on where the source was at the backup.
            assert await client.history("conv-a").save_versioned(snapshot("a3")) == 4
            assert await client.events.append(THREAD_A, 3, event(6)) == 6
            stats = await client.admin.stats()
            assert (stats.threads, stats.conversations) == (3, 2)
    finally:
        assert restored.stop() == 0
        assert source.stop() == 0


# -- listings ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["lmdb", "postgres"])
async def test_listings_page_through_every_thread_and_key(
    backend: str, start_daemon: Callable[..., Daemon]
) -> None:
    fresh = start_daemon(backend)
    ids = [f"t-{n:05d}" for n in range(1050)]
    async with TurnstoreClient(fresh.target) as client:
        async with client.events.appender() as appender:
            acks = [await appender.submit(thread, 1, [event(0)]) for thread in ids]
            await asyncio.gather(*acks)
        await client.events.finish_turn(ids[7], 1)
        for key in ("k1", "k2", "k3"):
            await client.history(key).save(snapshot(key))
        await client.history("k2").delete()
        await client.history("k3").save(snapshot("again"))

        listed = [thread async for thread in client.admin.list_threads()]
        assert [thread.thread_id for thread in listed] == ids
        assert {thread.event_count for thread in listed} == {1}
        assert [thread.finished_turns for thread in listed[6:9]] == [0, 1, 0]
        assert all(thread.last_write_unix_nanos > 0 for thread in listed)
        later = [thread.thread_id async for thread in client.admin.list_threads(ids[999])]
        assert later == ids[1000:]
        # A start longer than any key still orders correctly.
        assert [t async for t in client.admin.list_threads("t-" + "z" * 600)] == []
        assert len([t async for t in client.admin.list_threads("s" + "z" * 600)]) == 1050

        keys = [key async for key in client.admin.list_keys()]
        assert [(key.key, key.version) for key in keys] == [("k1", 1), ("k3", 2)]
        assert [key.key async for key in client.admin.list_keys("k1")] == ["k3"]

    async with grpc.aio.insecure_channel(fresh.target) as raw:
        stub = pb_grpc.EventStoreServiceStub(raw)
        messages = [m async for m in stub.ListThreads(pb.ListThreadsRequest())]
    assert [len(message.threads) for message in messages] == [1000, 50]


@pytest.mark.parametrize(
    ("service", "method", "request_class"),
    [
        ("EventStoreService", "ListThreads", pb.ListThreadsRequest),
        ("HistoryStoreService", "ListKeys", pb.ListKeysRequest),
        ("HistoryStoreService", "Batch", pb.BatchRequest),
        ("AdminService", "Backup", pb.BackupRequest),
        ("AdminService", "GetStats", pb.GetStatsRequest),
    ],
)
async def test_the_new_rpcs_answer_malformed_requests_properly(
    fresh: Daemon, raw: grpc.aio.Channel, service: str, method: str, request_class: Any
) -> None:
    path = f"/turnstore.v1.{service}/{method}"
    streaming = method.startswith("List")

    async def call(body: bytes) -> grpc.StatusCode:
        try:
            if streaming:
                stream = raw.unary_stream(path, request_serializer=None)
                async for _ in stream(body, timeout=10):
                    pass
            else:
                await raw.unary_unary(path, request_serializer=None)(body, timeout=10)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    # Garbage, a string field that is not UTF-8, and an unknown field.
    assert await call(b"\xff\xff\xff") == grpc.StatusCode.INVALID_ARGUMENT
    if request_class is not pb.GetStatsRequest:
        assert await call(b"\x0a\x02\xff\xfe") == grpc.StatusCode.INVALID_ARGUMENT
    unknown = await call(b"\xf8\x07\x01")  # field 127, varint 1
    # Backup is parsed, then refused: this daemon has no --backup-dir; a Batch
    # without operations is refused as empty.
    expected_unknown = {
        "Backup": grpc.StatusCode.FAILED_PRECONDITION,
        "Batch": grpc.StatusCode.INVALID_ARGUMENT,
    }.get(method, grpc.StatusCode.OK)
    assert unknown == expected_unknown
    assert fresh.process is not None and fresh.process.poll() is None
    assert await call(request_class().SerializeToString()) == expected_unknown


# -- export and import -------------------------------------------------------------


async def write_odd_content(channel: grpc.aio.Channel) -> None:
    """Events written by a raw client (a JSON content type with parameters, an
    empty body, unusual values) and a snapshot the flat JSON form cannot carry."""
    events = pb_grpc.EventStoreServiceStub(channel)
    await events.Append(
        pb.AppendRequest(
            thread_id=THREAD_RAW,
            turn=7,
            events=[
                pb.EventEnvelope(
                    event_id="charset",
                    timestamp="2026-12-01T00:00:00Z",
                    type="note",
                    body=b'{"text":"caf\xc3\xa9"}',
                    content_type="application/json; charset=utf-8",
                ),
                pb.EventEnvelope(event_id="empty", type="ping"),
                pb.EventEnvelope(
                    event_id="nested",
                    timestamp="2026-12-01T00:00:01.5+02:00",
                    type="table",
                    body=b'{"rows":[[1,null],{"a":-0.5}]}',
                ),
            ],
        )
    )
    await events.FinishTurn(pb.FinishTurnRequest(thread_id=THREAD_RAW, turn=7))
    history = pb_grpc.HistoryStoreServiceStub(channel)
    await history.Save(
        pb.SaveRequest(key="binary", data=b"\x00\xff", content_type="application/x-thing")
    )


async def everything(target: str) -> dict[str, Any]:
    """Every thread's dump and every key's latest snapshot."""
    async with TurnstoreClient(target) as client:
        threads = [t.thread_id async for t in client.admin.list_threads()]
        keys = [k.key async for k in client.admin.list_keys()]
        out: dict[str, Any] = {}
        for thread in threads:
            out[f"thread {thread}"] = await thread_dump(client, thread)
        for key in keys:
            dump = await snapshot_dump(target, key)
            out[f"key {key}"] = dump[0][1:]  # the latest, without its version
        return out


def without_versions(lines: bytes) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in lines.splitlines()]
    assert records[0]["kind"] == "header"
    for record in records:
        record.pop("version", None)
    return records[1:]


@pytest.mark.parametrize(
    ("source_backend", "target_backend"),
    [("lmdb", "lmdb"), ("postgres", "postgres"), ("lmdb", "postgres"), ("postgres", "lmdb")],
)
async def test_an_export_imported_into_a_fresh_daemon_and_again_is_the_same(
    source_backend: str,
    target_backend: str,
    start_daemon: Callable[..., Daemon],
    tmp_path: Path,
) -> None:
    fresh = start_daemon(source_backend)
    async with TurnstoreClient(fresh.target) as client:
        await populate(client)
    async with grpc.aio.insecure_channel(fresh.target) as raw:
        await write_odd_content(raw)
    exports = tmp_path / "exports"
    exports.mkdir()
    exported = exports / "export.jsonl"
    result = await admin_cli("export", "--target", fresh.target, "--output", str(exported))
    assert result.returncode == 0, result.stderr
    assert b"exported 3 threads (13 events, 5 finished turns) and 3 snapshots" in result.stderr
    records = [json.loads(line) for line in exported.read_text().splitlines()]
    assert records[0] == {
        "kind": "header",
        "format": "turnstore-export",
        "version": 1,
        "exported_at": records[0]["exported_at"],
    }
    assert records[1] == {
        "kind": "event",
        "thread_id": THREAD_A,
        "turn": 1,
        "position": 0,
        "event": event(0).to_json_dict(),
    }
    odd = [r for r in records if r.get("thread_id") == THREAD_RAW and r["kind"] == "event"]
    # A header without an RFC 3339 timestamp has no flat form: it travels raw.
    assert [("event" in r, "envelope" in r) for r in odd] == [
        (True, False),
        (False, True),
        (True, False),
    ]
    assert odd[0]["event"]["text"] == "café"
    assert odd[1]["envelope"]["event_id"] == "empty" and odd[1]["envelope"]["timestamp"] == ""
    assert os.listdir(exports) == ["export.jsonl"]  # no partial file left

    target = start_daemon(target_backend)
    first = await admin_cli(
        "import", "--target", target.target, "--input", str(exported), "--format", "json"
    )
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {
        "threads": 3,
        "events": 13,
        "positions_moved": 0,
        "turns_finished": 5,
        "turns_already_finished": 0,
        "snapshots_saved": 3,
        "snapshots_unchanged": 0,
    }
    source_content = await everything(fresh.target)
    assert await everything(target.target) == source_content
    async with TurnstoreClient(target.target) as client:
        stats = await client.admin.stats()
        target_versions = {k.key: k.version async for k in client.admin.list_keys()}
    async with TurnstoreClient(fresh.target) as client:
        source_stats = await client.admin.stats()
        source_versions = {k.key: k.version async for k in client.admin.list_keys()}
    assert (stats.threads, stats.events, stats.turns, stats.finished_turns) == (3, 13, 7, 5)
    assert (stats.threads, stats.events, stats.turns, stats.finished_turns) == (
        source_stats.threads,
        source_stats.events,
        source_stats.turns,
        source_stats.finished_turns,
    )
    assert stats.conversations == source_stats.conversations == 3
    # Only the latest snapshot travels, as a new version of a key the target did not have.
    assert source_versions == {"binary": 1, "conv-a": 3, "conv-b": 6}
    assert target_versions == {"binary": 1, "conv-a": 1, "conv-b": 1}

    # Importing again (from stdin this time) stores nothing twice.
    second = await admin_cli(
        "import", "--target", target.target, "--format", "json", stdin=exported.read_bytes()
    )
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert (report["events"], report["positions_moved"]) == (13, 0)
    assert (report["turns_finished"], report["turns_already_finished"]) == (0, 5)
    assert (report["snapshots_saved"], report["snapshots_unchanged"]) == (0, 3)
    assert await everything(target.target) == source_content
    async with TurnstoreClient(target.target) as client:
        again = await client.admin.stats()
    assert (again.events, again.finished_turns, again.snapshot_versions) == (
        stats.events,
        stats.finished_turns,
        stats.snapshot_versions,
    )
    assert (again.events, again.snapshot_versions) == (13, 3)

    # An export of the copy is the original export, but for snapshot versions.
    copy = await admin_cli("export", "--target", target.target)
    assert copy.returncode == 0, copy.stderr
    assert without_versions(copy.stdout) == without_versions(exported.read_bytes())


@pytest.mark.parametrize("backend", ["lmdb", "postgres"])
async def test_an_import_stops_at_a_bad_line_and_names_it(
    backend: str, start_daemon: Callable[..., Daemon]
) -> None:
    fresh = start_daemon(backend)
    lines = [
        json.dumps(
            {
                "kind": "event",
                "thread_id": "t",
                "turn": 1,
                "position": 0,
                "event": event(1).to_json_dict(),
            }
        ),
        json.dumps({"kind": "turn_finished", "thread_id": "t", "turn": 1}),
        json.dumps(
            {
                "kind": "event",
                "thread_id": "t",
                "turn": 1,
                "position": 1,
                "event": event(2).to_json_dict(),
            }
        ),
        json.dumps(
            {"kind": "snapshot", "key": "k", "version": 1, "content_type": "", "data_base64": ""}
        ),
        '{"kind": "snapshot", "key": "k", "version": 1, "content_type": "", "data_base64": "!!"}',
    ]
    result = await admin_cli("import", "--target", fresh.target, stdin="\n".join(lines).encode())
    assert result.returncode == 1
    # The append to the finished turn (line 3) is refused by the daemon.
    assert b"line 3: TurnFinishedError" in result.stderr
    async with TurnstoreClient(fresh.target) as client:
        turn = await client.events.get_turn("t", 1)
        assert turn is not None and turn.finished and turn.events == [event(1)]
    malformed = await admin_cli("import", "--target", fresh.target, stdin=lines[4].encode())
    assert malformed.returncode == 1
    assert b"line 1: 'data_base64' is not base64" in malformed.stderr
    newer = json.dumps({"kind": "header", "format": "turnstore-export", "version": 2})
    refused = await admin_cli("import", "--target", fresh.target, stdin=newer.encode())
    assert refused.returncode == 1
    assert b"newer than this turnstore" in refused.stderr
