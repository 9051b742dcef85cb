"""Byte payloads, ranged key listings, deleted keys that cost nothing, and the atomic batch
(issue 21, the history side), against real daemons on both backends.

What each test attacks:
- a blob of any content type comes back byte for byte (and JSON stays strict);
- ``list_keys`` with a prefix, an end, a limit and newest-first lists exactly
  what a model of the range lists, and pages continue in both directions;
- the latest key under a prefix is one index entry read, however many keys
  sort after the prefix or were deleted inside it (counted on LMDB, the plan's
  rows on PostgreSQL);
- deleted keys are never listed and versions never restart, not even after a
  ``delete_prefix``;
- a batch is all or nothing: one conflicting or invalid operation changes
  nothing, and a daemon killed with SIGKILL under batches leaves each whole or
  absent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import lmdb
import psycopg
import pytest

from tests.support.daemon import Daemon
from tests.support.postgres import PostgresServer, fresh_database
from tests.test_cli import run
from tests.test_cross_language import DRIVERS, run_driver
from tests.test_scopes import ADMIN, ALICE, READER, access_args, http_base
from turnstore import (
    BatchDelete,
    BatchDeletePrefix,
    BatchSave,
    ConversationSnapshot,
    InvalidArgumentError,
    PermissionDeniedError,
    SnapshotFormatError,
    TurnstoreClient,
    VersionConflictError,
)
from turnstore.history import BatchOperation
from turnstore.server.access.errors import PermissionDeniedError as ScopeRefusal
from turnstore.server.access.scoped_engine import ScopedEngine
from turnstore.server.access.scopes import parse_scope
from turnstore.server.storage.batches import DeletePrefixOp, KeyRange, SaveOp
from turnstore.server.storage.config import EngineConfig, PostgresConfig
from turnstore.server.storage.errors import VersionConflictError as EngineVersionConflict
from turnstore.server.storage.lmdb import operations, schema
from turnstore.server.storage.lmdb.engine import LmdbEngine
from turnstore.server.storage.postgres.engine import PostgresEngine
from turnstore.server.storage.postgres.operations import list_keys_query

BINARY = bytes(range(256)) * 3 + b"\x00\xff\xfe not json {"
OCTETS = "application/octet-stream"


@pytest.fixture(params=["lmdb", "postgres"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[TurnstoreClient]:
    """A client of the session's daemon on each backend (tests keep to their own prefix)."""
    daemon: Daemon = request.getfixturevalue(
        "postgres_daemon" if request.param == "postgres" else "daemon"
    )
    async with TurnstoreClient(daemon.target) as connected:
        yield connected


@pytest.fixture
def prefix() -> str:
    return f"h21/{uuid.uuid4().hex[:8]}/"


async def keys_of(client: TurnstoreClient, **query: object) -> list[str]:
    return [key.key async for key in client.list_keys(**query)]  # type: ignore[arg-type]


# -- byte payloads ---------------------------------------------------------------------


async def test_bytes_of_any_type_round_trip(client: TurnstoreClient, prefix: str) -> None:
    store = client.history(prefix + "blob")
    assert await store.save_bytes(BINARY, OCTETS) == 1
    assert await store.save_bytes(b"", "application/x-empty", expected_version=1) == 2
    blob = await store.load_bytes(1)
    assert blob is not None
    assert (blob.data, blob.content_type, blob.version) == (BINARY, OCTETS, 1)
    latest = await store.load_bytes()
    assert latest is not None and (latest.data, latest.version) == (b"", 2)
    # The JSON reader refuses it by name, as before; the byte reader never does.
    with pytest.raises(SnapshotFormatError):
        await store.load()
    with pytest.raises(VersionConflictError):
        await store.save_bytes(b"x", OCTETS, expected_version=1)
    # JSON stays strictly checked, whatever reader saved it.
    with pytest.raises(InvalidArgumentError):
        await store.save_bytes(b"{NaN}", "application/json")
    with pytest.raises(InvalidArgumentError):
        await store.save_bytes(b"x", "bad\0type")
    # A snapshot saved as JSON comes back as its bytes.
    json_store = client.history(prefix + "json")
    await json_store.save_bytes(b'{"version":1,"messages":[],"pinned":[]}', "application/json")
    as_bytes = await json_store.load_bytes()
    assert as_bytes is not None and as_bytes.content_type == "application/json"
    assert json.loads(as_bytes.data) == {"version": 1, "messages": [], "pinned": []}
    assert await json_store.load() is not None
    assert await client.history(prefix + "none").load_bytes() is None


# -- listings ----------------------------------------------------------------------------


def model(
    stored: list[str],
    prefix: str = "",
    start_after: str = "",
    end_before: str = "",
    limit: int = 0,
    newest_first: bool = False,
) -> list[str]:
    """What a listing must answer, from the definition (byte order of UTF-8)."""

    def order(key: str) -> bytes:
        return key.encode()

    keys = sorted((k for k in stored if k.startswith(prefix)), key=order)
    if end_before:
        keys = [k for k in keys if order(k) < order(end_before)]
    if newest_first:
        keys.reverse()
        if start_after:
            keys = [k for k in keys if order(k) < order(start_after)]
    elif start_after:
        keys = [k for k in keys if order(k) > order(start_after)]
    return keys[:limit] if limit else keys


async def test_ranged_listings_match_the_model(client: TurnstoreClient, prefix: str) -> None:
    rng = random.Random(21)
    names = sorted(
        {"".join(rng.choices("ab/é\U0001f600z", k=rng.randint(1, 4))) for _ in range(80)}
    )
    stored = [prefix + name for name in names]
    await client.batch([BatchSave(key, b"[]") for key in stored])
    # Deleted keys inside the range must not show (and not stop a listing).
    deleted = stored[::5]
    await client.batch([BatchDelete(key) for key in deleted])
    live = [key for key in stored if key not in deleted]
    probes = ["", prefix, prefix + "a", prefix + "b/", prefix + "é", prefix + "z", prefix + "zz"]
    checked = 0
    for sub, after, end, limit, newest in itertools.product(
        [prefix, prefix + "a", prefix + "b", prefix + "é"],
        probes,
        ["", prefix + "b", prefix + "é", prefix + "\U0001f600"],
        [0, 1, 3],
        [False, True],
    ):
        query = {
            "prefix": sub,
            "start_after": after,
            "end_before": end,
            "limit": limit,
            "newest_first": newest,
        }
        assert await keys_of(client, **query) == model(live, **query), query  # type: ignore[arg-type]
        checked += 1
    assert checked == 4 * 7 * 4 * 3 * 2


async def test_pages_continue_in_both_directions(client: TurnstoreClient, prefix: str) -> None:
    stored = [f"{prefix}{n:04}" for n in range(2500)]  # more than one stream message
    for chunk in range(0, len(stored), 1000):
        await client.batch([BatchSave(key, b"{}") for key in stored[chunk : chunk + 1000]])
    assert await keys_of(client, prefix=prefix) == stored
    assert await keys_of(client, prefix=prefix, newest_first=True) == stored[::-1]
    assert await keys_of(client, prefix=prefix, limit=1200) == stored[:1200]
    pages: list[str] = []
    after = ""
    while True:
        page = await keys_of(client, prefix=prefix, start_after=after, limit=700, newest_first=True)
        if not page:
            break
        pages += page
        after = page[-1]
    assert pages == stored[::-1]
    # The latest checkpoint of a thread: the greatest key under its prefix.
    latest = [key async for key in client.list_keys(prefix=prefix, limit=1, newest_first=True)]
    assert [(k.key, k.version) for k in latest] == [(stored[-1], 1)]


async def test_deleted_keys_are_gone_and_versions_never_restart(
    client: TurnstoreClient, prefix: str
) -> None:
    one = client.history(prefix + "one")
    assert await one.save_bytes(b"1", OCTETS) == 1
    assert await one.save_bytes(b"2", OCTETS) == 2
    assert await one.delete() == 2
    assert await keys_of(client, prefix=prefix) == []
    assert await one.load_bytes() is None
    # Deleted means "nothing stored" to a conditional save, and the counter goes on.
    assert await one.save_bytes(b"3", OCTETS, expected_version=0) == 3
    results = await client.batch([BatchDeletePrefix(prefix)])
    assert (results[0].removed_keys, results[0].removed_versions) == (1, 1)
    assert await keys_of(client, prefix=prefix) == []
    assert await one.save_bytes(b"4", OCTETS) == 4
    assert [(k.key, k.version) async for k in client.list_keys(prefix=prefix)] == [
        (prefix + "one", 4)
    ]


# -- the batch ---------------------------------------------------------------------------


async def test_a_batch_applies_in_order(client: TurnstoreClient, prefix: str) -> None:
    await client.history(prefix + "t/1").save_bytes(b"a", OCTETS)
    await client.history(prefix + "t/2").save_bytes(b"b", OCTETS)
    await client.history(prefix + "keep").save_bytes(b"k", OCTETS)
    results = await client.batch(
        [
            BatchSave(prefix + "t/1", b"again", OCTETS, expected_version=1),
            BatchDeletePrefix(prefix + "t/"),
            BatchSave(prefix + "t/3", b"[3]"),
            BatchSave(prefix + "t/1", b"[1]", expected_version=0),
            BatchDelete(prefix + "keep", expected_version=1),
            BatchDelete(prefix + "never"),
        ]
    )
    assert [(r.version, r.removed_versions, r.removed_keys) for r in results] == [
        (2, 0, 0),
        (0, 3, 2),
        (1, 0, 0),
        (3, 0, 0),
        (0, 1, 1),
        (0, 0, 0),
    ]
    assert await keys_of(client, prefix=prefix) == [prefix + "t/1", prefix + "t/3"]
    blob = await client.history(prefix + "t/1").load_bytes()
    assert blob is not None and (blob.data, blob.version) == (b"[1]", 3)


async def state_of(client: TurnstoreClient, prefix: str) -> list[tuple[str, int, bytes]]:
    out = []
    async for key in client.list_keys(prefix=prefix):
        blob = await client.history(key.key).load_bytes()
        assert blob is not None
        out.append((key.key, blob.version, blob.data))
    return out


@pytest.mark.parametrize("failing", ["conflict", "delete_conflict", "bad_json", "empty_prefix"])
async def test_one_refused_operation_changes_nothing(
    client: TurnstoreClient, prefix: str, failing: str
) -> None:
    for name in ("a", "b", "c"):
        await client.history(prefix + name).save_bytes(name.encode(), OCTETS)
    before = await state_of(client, prefix)
    refused: dict[str, BatchOperation] = {
        "conflict": BatchSave(prefix + "c", b"x", OCTETS, expected_version=7),
        "delete_conflict": BatchDelete(prefix + "c", expected_version=0),
        "bad_json": BatchSave(prefix + "c", b"{'no': json}", "application/json"),
        "empty_prefix": BatchDeletePrefix(""),
    }
    bad = refused[failing]
    error_type = VersionConflictError if "conflict" in failing else InvalidArgumentError
    with pytest.raises(error_type) as raised:
        await client.batch(
            [
                BatchSave(prefix + "a", b"changed", OCTETS),
                BatchDeletePrefix(prefix + "b"),
                BatchSave(prefix + "new", b"new", OCTETS),
                bad,
                BatchDelete(prefix + "a"),
            ]
        )
    assert "operations[3]" in str(raised.value)
    assert await state_of(client, prefix) == before
    # Nothing was given a version either: the next save continues from before.
    assert await client.history(prefix + "a").save_bytes(b"a2", OCTETS) == 2
    assert await client.history(prefix + "new").save_bytes(b"n", OCTETS) == 1


async def test_a_batch_carries_megabytes(client: TurnstoreClient, prefix: str) -> None:
    """A batch is not held to the 64 KiB of small requests: three 2 MiB blobs in one."""
    blobs = [bytes([n]) * (2 << 20) for n in range(3)]
    results = await client.batch(
        [BatchSave(f"{prefix}{n}", blob, OCTETS) for n, blob in enumerate(blobs)]
    )
    assert [r.version for r in results] == [1, 1, 1]
    loaded = await client.history(f"{prefix}2").load_bytes()
    assert loaded is not None and loaded.data == blobs[2]


async def test_batch_size_is_bounded(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon("lmdb", "--max-batch-operations", "3")
    async with TurnstoreClient(daemon.target) as client:
        with pytest.raises(InvalidArgumentError, match="must hold at least one"):
            await client.batch([])
        with pytest.raises(InvalidArgumentError, match="over the limit of 3"):
            await client.batch([BatchSave(f"k{n}", b"{}") for n in range(4)])
        assert len(await client.batch([BatchSave(f"k{n}", b"{}") for n in range(3)])) == 3
        with pytest.raises(TypeError):
            await client.batch([("save", "k", b"{}")])  # type: ignore[list-item]


@pytest.mark.parametrize("backend", ["lmdb", "postgres"])
async def test_batches_survive_sigkill_whole_or_not_at_all(
    backend: str, start_daemon: Callable[..., Daemon]
) -> None:
    """Batches rewrite every key of a set to one generation; a SIGKILL under them leaves
    every key at one generation, at least the last acknowledged one."""
    daemon = start_daemon(backend)
    keys = [f"crash/{n:02}" for n in range(24)]
    padding = b"p" * 20_000
    acknowledged = 0
    stop = asyncio.Event()
    going = asyncio.Event()

    async def writer(client: TurnstoreClient, lane: int) -> None:
        nonlocal acknowledged
        for generation in itertools.count(lane, 4):
            if stop.is_set():
                return
            body = json.dumps({"generation": generation}).encode()
            operations = [BatchSave(key, body) for key in keys]
            try:
                await client.batch([*operations, BatchSave("crash/pad", padding, OCTETS)])
            except Exception:
                return
            acknowledged += 1
            if acknowledged >= 40:
                going.set()

    async with TurnstoreClient(daemon.target) as client:
        tasks = [asyncio.create_task(writer(client, lane)) for lane in range(4)]
        await asyncio.wait_for(going.wait(), 60)
        daemon.kill()
        stop.set()
        await asyncio.gather(*tasks)
    restarted = Daemon(daemon.data_dir, extra_args=daemon.extra_args)
    restarted.start()
    try:
        async with TurnstoreClient(restarted.target) as client:
            generations = set()
            versions = set()
            for key in keys:
                blob = await client.history(key).load_bytes()
                assert blob is not None
                generations.add(json.loads(blob.data)["generation"])
                versions.add(blob.version)
            pad = await client.history("crash/pad").load_bytes()
        # Every committed batch moved every key one version on, to one generation.
        assert len(generations) == 1 and len(versions) == 1, (generations, versions)
        assert pad is not None and {pad.version} == versions
        assert versions.pop() >= acknowledged
    finally:
        assert restarted.stop() == 0, restarted.log_lines[-20:]


# -- what a listing costs --------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[LmdbEngine]:
    opened = LmdbEngine.open(EngineConfig(data_dir=tmp_path / "data"))
    try:
        yield opened
    finally:
        opened.close()


def counted(engine: LmdbEngine, key_range: KeyRange, limit: int) -> tuple[list[str], int]:
    state = engine._state
    with state.read() as txn:
        found, examined = operations.list_keys_counted(state, txn, key_range, limit)
    return [summary.key for summary in found], examined


def test_the_latest_of_a_prefix_costs_two_index_reads(engine: LmdbEngine) -> None:
    """5,000 keys after the prefix and 21,000 deleted inside it: the latest key under the
    prefix reads two index entries (the bound it steps back from, and the key); a page
    reads its keys and at most one past each bound."""
    engine.apply_batch([_save(f"thread-a/{n:05}") for n in range(1000)]).result()
    for chunk in range(0, 20_000, 1000):
        engine.apply_batch(
            [_save(f"thread-a/{n:05}x") for n in range(chunk, chunk + 1000)]
        ).result()
    engine.apply_batch([_prefix_delete("thread-a/")]).result()  # 21,000 deleted keys
    for chunk in range(0, 5000, 1000):
        engine.apply_batch([_save(f"thread-b/{n:05}") for n in range(chunk, chunk + 1000)]).result()
    engine.apply_batch([_save(f"thread-a/{n:05}") for n in range(3)]).result()
    latest, examined = counted(engine, KeyRange(prefix="thread-a/", newest_first=True), 1)
    # The entry at the prefix's upper bound (thread-b/00000) is read to step back from.
    assert (latest, examined) == (["thread-a/00002"], 2)
    first, examined = counted(engine, KeyRange(prefix="thread-a/"), 10)
    assert first == [f"thread-a/{n:05}" for n in range(3)] and examined <= 4
    page, examined = counted(engine, KeyRange(prefix="thread-b/", newest_first=True), 10)
    assert page == [f"thread-b/{n:05}" for n in range(4999, 4989, -1)] and examined == 10
    page, examined = counted(
        engine, KeyRange(prefix="thread-a/", start_after="thread-a/00002", newest_first=True), 10
    )
    assert page == ["thread-a/00001", "thread-a/00000"] and examined <= 4
    page, examined = counted(engine, KeyRange(prefix="thread-b/", end_before="thread-b/00100"), 5)
    assert len(page) == 5 and examined == 5
    # The live index holds exactly the live keys: what deleted keys would cost is gone.
    with engine._state.read() as txn:
        live = txn.stat(engine._state.dbs[schema.LIVE_CONVERSATIONS])["entries"]
        kept = txn.stat(engine._state.dbs[schema.CONVERSATIONS])["entries"]
    assert (live, kept) == (5003, 26_000)


def _save(key: str) -> SaveOp:
    return SaveOp(key, b"{}", "application/json")


def _prefix_delete(prefix: str) -> DeletePrefixOp:
    return DeletePrefixOp(prefix)


async def test_postgres_lists_the_latest_of_a_prefix_from_the_live_index(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """The same shape on PostgreSQL, from the plan: an index scan of the partial index of
    live keys that returns one row, with 5,000 keys after the prefix and 2,000 deleted."""
    with fresh_database(postgres_server) as dsn:
        daemon = Daemon(
            tmp_path / "unused", extra_args=["--backend", "postgres", "--postgres-dsn", dsn]
        )
        daemon.start()
        try:
            async with TurnstoreClient(daemon.target) as client:
                await client.batch([BatchSave(f"a/{n:05}", b"{}") for n in range(1000)])
                await client.batch([BatchSave(f"a/{n:05}x", b"{}") for n in range(1000)])
                await client.batch([BatchDeletePrefix("a/")])
                for chunk in range(0, 5000, 1000):
                    await client.batch(
                        [BatchSave(f"b/{n:05}", b"{}") for n in range(chunk, chunk + 1000)]
                    )
                await client.batch([BatchSave(f"a/{n:05}", b"{}") for n in range(3)])
                assert await keys_of(client, prefix="a/", limit=1, newest_first=True) == ["a/00002"]
        finally:
            assert daemon.stop() == 0, daemon.log_lines[-20:]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ANALYZE turnstore_conversations")
            sql, params = list_keys_query(KeyRange(prefix="a/", newest_first=True), 1)
            plan = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params).fetchone()
    assert plan is not None
    nodes = _plan_nodes(plan[0][0]["Plan"])
    scans = [node for node in nodes if "Scan" in node["Node Type"]]
    assert len(scans) == 1, scans
    assert scans[0]["Index Name"] == "turnstore_conversations_live", scans[0]
    assert scans[0]["Actual Rows"] == 1 and scans[0].get("Rows Removed by Filter", 0) == 0


def _plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = [node]
    for child in node.get("Plans", []):
        out += _plan_nodes(child)
    return out


def test_a_version_2_data_directory_gains_the_live_index(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    engine = LmdbEngine.open(EngineConfig(data_dir=data_dir))
    engine.apply_batch([_save(f"k/{n}") for n in range(10)]).result()
    engine.delete_snapshots("k/3").result()
    engine.close()
    # What schema version 2 wrote: no live_conversations database at all.
    env = lmdb.open(str(data_dir), max_dbs=len(schema.ALL_DATABASES), subdir=True)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(schema.LIVE_CONVERSATIONS, txn=txn), delete=True)
        meta = env.open_db(schema.META, txn=txn)
        txn.put(schema.META_SCHEMA_VERSION, schema.U64.pack(2), db=meta)
    env.close()
    engine = LmdbEngine.open(EngineConfig(data_dir=data_dir))
    try:
        assert [k.key for k in engine.list_keys(prefix="k/")] == [
            f"k/{n}" for n in range(10) if n != 3
        ]
        assert engine.storage_stats().conversations == 9
        with engine._state.read() as txn:
            stored = txn.get(schema.META_SCHEMA_VERSION, db=engine._state.dbs[schema.META])
        assert stored is not None and schema.U64.unpack(stored)[0] == 3
        assert engine.save_snapshot("k/3", b"{}", "application/json").result() == 2
    finally:
        engine.close()


# -- scopes --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["lmdb", "postgres"])
async def test_scoped_batches_and_listings(
    backend: str, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = start_daemon(backend, *access_args(tmp_path))
    async with TurnstoreClient(daemon.target, token=ADMIN) as admin:
        await admin.batch(
            [BatchSave(f"{who}/{n}", b"{}") for who in ("alice", "bob") for n in range(3)]
        )
    async with (
        TurnstoreClient(daemon.target, token=ALICE) as alice,
        TurnstoreClient(daemon.target, token=READER) as reader,
    ):
        for refused in (
            [BatchSave("alice/3", b"{}"), BatchSave("bob/3", b"{}")],
            [BatchDelete("bob/0")],
            [BatchDeletePrefix("ali")],
            [BatchDeletePrefix("bob/")],
        ):
            with pytest.raises(PermissionDeniedError):
                await alice.batch(refused)
        with pytest.raises(PermissionDeniedError):
            await reader.batch([BatchDelete("alice/0")])
        assert await keys_of(alice, newest_first=True) == ["alice/2", "alice/1", "alice/0"]
        assert await keys_of(alice, prefix="bob/") == []
        assert await keys_of(alice, prefix="a", limit=1, newest_first=True) == ["alice/2"]
        assert await keys_of(alice, end_before="alice/1") == ["alice/0"]
        results = await alice.batch([BatchDeletePrefix("alice/"), BatchSave("alice/9", b"{}")])
        assert results[0].removed_keys == 3
        assert await keys_of(alice, prefix="alice/") == ["alice/9"]
    async with TurnstoreClient(daemon.target, token=ADMIN) as admin:
        assert await keys_of(admin, prefix="bob/") == ["bob/0", "bob/1", "bob/2"]


# -- no poison -------------------------------------------------------------------------


async def test_a_blob_is_shown_safely_by_the_cli_and_http(
    start_daemon: Callable[..., Daemon],
) -> None:
    """Bytes of another type, saved by a client, are read back exactly by the CLI (piped:
    base64) and the HTTP conversation read, and summed up on a terminal; a JSON snapshot
    next to them reads as before."""
    daemon = start_daemon("lmdb", "--http-listen", "127.0.0.1:0")
    async with TurnstoreClient(daemon.target) as client:
        await client.history("blob").save_bytes(BINARY, OCTETS)
        await client.history("json-blob").save_bytes(b'{"checkpoint": [1, 2]}', "application/json")
        await client.history("chat").save(ConversationSnapshot([{"role": "user"}], [True]))
    target = ["--target", daemon.target]
    piped = json.loads(run("history", "blob", "load", *target).stdout)
    assert base64.b64decode(piped["data_base64"]) == BINARY
    assert (piped["content_type"], piped["size_bytes"], piped["version"]) == (
        OCTETS,
        len(BINARY),
        1,
    )
    shown = run("history", "blob", "load", "--format", "text", *target)
    assert shown.returncode == 0 and OCTETS in shown.stdout and "\x00" not in shown.stdout
    other_json = json.loads(run("history", "json-blob", "load", *target).stdout)
    assert json.loads(base64.b64decode(other_json["data_base64"])) == {"checkpoint": [1, 2]}
    listed = run("conversations", "--prefix", "c", "--newest-first", *target).stdout
    assert [json.loads(line)["key"] for line in listed.splitlines()] == ["chat"]
    listed = run("conversations", "--newest-first", "--limit", "2", *target).stdout
    assert [json.loads(line)["key"] for line in listed.splitlines()] == ["json-blob", "chat"]
    chat = json.loads(run("history", "chat", "load", *target).stdout)
    assert chat["snapshot"] == {"version": 1, "messages": [{"role": "user"}], "pinned": [True]}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{http_base(daemon)}/v1/conversations/blob") as response,
    ):
        assert response.status == 200
        answer = await response.json()
    assert answer["snapshot"] is None and answer["size_bytes"] == len(BINARY)
    assert base64.b64decode(answer["data_base64"]) == BINARY


# -- longer keys ---------------------------------------------------------------------------


async def test_keys_up_to_1000_bytes_list_in_order(client: TurnstoreClient, prefix: str) -> None:
    """Keys past LMDB's 511 bytes: those sharing their first 511 bytes stay apart and in
    byte order, a 511-byte key and its longer neighbours are deleted one at a time, and
    the limit is 1000 bytes."""
    stem = prefix + "n" * (511 - len(prefix))  # exactly 511 bytes
    assert len(stem.encode()) == 511
    longest = prefix + "é" * ((1000 - len(prefix)) // 2)
    longest += "x" * (1000 - len(longest.encode()))
    assert len(longest.encode()) == 1000
    keys = sorted(
        [stem, stem + "\0", stem + "a", stem + "a" * 300, stem + "b", stem[:-1], longest],
        key=str.encode,
    )
    for key in keys:
        assert await client.history(key).save_bytes(key.encode(), OCTETS) == 1
    assert await keys_of(client, prefix=prefix) == keys
    assert await keys_of(client, prefix=prefix, newest_first=True) == keys[::-1]
    assert await keys_of(client, prefix=stem + "a") == [stem + "a", stem + "a" * 300]
    assert await keys_of(client, prefix=prefix, start_after=stem + "a", limit=2) == [
        stem + "a" * 300,
        stem + "b",
    ]
    assert await keys_of(
        client, prefix=prefix, start_after=stem + "a" * 300, newest_first=True, limit=2
    ) == [stem + "a", stem + "\0"]
    for key in keys:
        blob = await client.history(key).load_bytes()
        assert blob is not None and blob.data == key.encode()
    # Deleting the 511-byte key leaves the longer ones that start with it.
    assert await client.history(stem).delete() == 1
    assert await keys_of(client, prefix=stem) == [
        k for k in keys if k.startswith(stem) and k != stem
    ]
    assert await client.history(stem).save_bytes(b"again", OCTETS) == 2
    results = await client.batch([BatchDeletePrefix(stem + "a")])
    assert results[0].removed_keys == 2
    assert await client.history(stem + "a" * 300).save_bytes(b"x", OCTETS) == 2
    with pytest.raises(InvalidArgumentError, match="over the limit of 1000"):
        await client.history(longest + "y").save_bytes(b"x", OCTETS)
    with pytest.raises(InvalidArgumentError, match="over the limit of 1000"):
        await client.batch([BatchSave(longest + "y", b"{}")])


def test_long_keys_are_swept_by_retention(tmp_path: Path) -> None:
    """Retention finds a long key from its hashed record and removes it whole."""
    engine = LmdbEngine.open(
        EngineConfig(data_dir=tmp_path / "data", retain_conversations_for_seconds=3600)
    )
    try:
        long_key = "k/" + "z" * 900
        engine.apply_batch([_save(long_key), _save("k/short")]).result()
        result = engine.sweep_retention(now_ns=time.time_ns() + 7200 * 10**9)
        assert result.removed_conversations == 2
        assert engine.list_keys(prefix="k/") == []
        assert engine.load_snapshot(long_key) is None
        assert engine.save_snapshot(long_key, b"{}", "application/json").result() == 1
    finally:
        engine.close()


def test_a_scope_of_listed_keys_lists_its_range(engine: LmdbEngine) -> None:
    """A scope with a prefix and listed keys: ranged listings merge both, in order, and
    see nothing else; its batches may touch only those keys."""
    engine.apply_batch(
        [_save(key) for key in ("a/1", "a/2", "b/1", "b/2", "c/1", "faq", "zz")]
    ).result()
    scoped = ScopedEngine(engine, parse_scope({"key_prefix": "b/", "keys": ["faq", "a/2"]}))

    def listed(**query: Any) -> list[str]:
        return [summary.key for summary in scoped.list_keys(**query)]

    assert listed(prefix="") == ["a/2", "b/1", "b/2", "faq"]
    assert listed(newest_first=True, prefix="", limit=3) == ["faq", "b/2", "b/1"]
    assert listed(prefix="a/", newest_first=True) == ["a/2"]
    assert listed(prefix="b", end_before="b/2") == ["b/1"]
    assert listed(start_after="b/1", limit=2, prefix="") == ["b/2", "faq"]
    assert listed(start_after="b/1", newest_first=True, prefix="") == ["a/2"]
    assert listed(prefix="c/") == []
    with pytest.raises(ScopeRefusal):
        scoped.apply_batch([_save("a/2"), _save("a/1")])
    with pytest.raises(ScopeRefusal):
        scoped.apply_batch([_prefix_delete("a/")])
    results = scoped.apply_batch([_prefix_delete("b/"), _save("faq")]).result()
    assert [r.removed_keys for r in results] == [2, 0]
    assert [k.key for k in engine.list_keys(prefix="b/")] == []


async def test_a_huge_batch_is_refused_before_it_is_decoded(daemon: Daemon) -> None:
    """4 MiB of empty operations (two million) is refused from a scan of its wire bytes,
    that stops at the limit + 1, not after decoding two million messages."""
    async with grpc.aio.insecure_channel(daemon.target) as channel:
        batch = channel.unary_unary(
            "/turnstore.v1.HistoryStoreService/Batch",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await batch(b"\x0a\x00" * 2_000_000, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The scan's words ("more than"), not the decoded batch's count.
    assert "holds more than 1000 operations" in (raised.value.details() or "")


async def test_a_postgres_database_from_before_gains_the_live_index(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Tables of schema version 1 (no partial index of live keys) get it, and version 2,
    when a daemon starts."""
    with fresh_database(postgres_server) as dsn:
        args = ["--backend", "postgres", "--postgres-dsn", dsn]
        daemon = Daemon(tmp_path / "unused", extra_args=args)
        daemon.start()
        try:
            async with TurnstoreClient(daemon.target) as client:
                await client.batch([BatchSave("k/1", b"{}"), BatchSave("k/2", b"{}")])
        finally:
            assert daemon.stop() == 0, daemon.log_lines[-20:]
        with psycopg.connect(dsn, autocommit=True) as conn:
            # What schema version 1 made: no partial index of live keys.
            conn.execute("DROP INDEX turnstore_conversations_live")
            conn.execute("UPDATE turnstore_meta SET value = 1 WHERE name = 'schema_version'")
        daemon = Daemon(tmp_path / "unused", extra_args=args)
        daemon.start()
        try:
            async with TurnstoreClient(daemon.target) as client:
                assert await keys_of(client, prefix="k/", newest_first=True) == ["k/2", "k/1"]
        finally:
            assert daemon.stop() == 0, daemon.log_lines[-20:]
        with psycopg.connect(dsn, autocommit=True) as conn:
            found = conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'turnstore_conversations_live'"
            ).fetchone()
            version = conn.execute(
                "SELECT value FROM turnstore_meta WHERE name = 'schema_version'"
            ).fetchone()
    assert found is not None and "WHERE (current_version <> 0)" in found[0]
    assert version == (2,)


async def test_a_blob_saved_by_one_client_reads_in_every_other(
    daemon: Daemon, tmp_path: Path
) -> None:
    """No poison across languages: bytes and non-snapshot JSON saved by Python come back
    byte for byte from every driver's load_bytes, and each one's snapshot load refuses
    them by name (a SnapshotFormat error), without failing the driver."""
    key = f"h21/shared/{uuid.uuid4().hex[:8]}/"
    checkpoint = b'{"checkpoint": {"id": "1ef"}, "channel_values": {}}'
    async with TurnstoreClient(daemon.target) as client:
        await client.history(key + "bytes").save_bytes(BINARY, OCTETS)
        await client.history(key + "json").save_bytes(checkpoint, "application/json")
    steps = [
        {"op": op, "key": key + name} for name in ("bytes", "json") for op in ("load_bytes", "load")
    ]
    scenario = {"events": {}, "snapshots": {}, "steps": steps}
    for driver in DRIVERS:
        outcomes = run_driver(driver, driver.prepare(), scenario, daemon.target, tmp_path)
        assert outcomes[0] == {
            "data_base64": base64.b64encode(BINARY).decode(),
            "content_type": OCTETS,
            "version": 1,
        }, driver.language
        assert outcomes[2] == {
            "data_base64": base64.b64encode(checkpoint).decode(),
            "content_type": "application/json",
            "version": 1,
        }, driver.language
        for refused in (outcomes[1], outcomes[3]):
            assert "SnapshotFormat" in refused["error"], (driver.language, refused)


@pytest.mark.parametrize("backend", ["lmdb", "postgres"])
def test_a_refused_batch_leaves_nothing_in_a_shared_commit(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Writes queued together share one commit: a batch refused midway (its first
    operations already applied in that transaction) is undone alone, while the saves
    before and after it in the same commit are kept."""
    config = EngineConfig(data_dir=tmp_path / "data")
    with contextlib.ExitStack() as stack:
        if backend == "lmdb":
            engine: LmdbEngine | PostgresEngine = LmdbEngine.open(config)
        else:
            server: PostgresServer = request.getfixturevalue("postgres_server")
            dsn = stack.enter_context(fresh_database(server))
            engine = PostgresEngine.open(config, PostgresConfig(dsn, pool_size=2))
        stack.callback(engine.close)
        engine.save_snapshot("c", b"{}", "application/json").result()
        release, holding = threading.Event(), threading.Event()

        def hold(*_: object) -> None:
            holding.set()
            release.wait(10)

        # Hold the writer so that the next three writes share one transaction.
        held = engine._submit(None, hold)
        assert holding.wait(10)
        before = engine.save_snapshot("a", b"[1]", "application/json")
        refused = engine.apply_batch(
            [
                _save("b"),
                _prefix_delete("c"),
                SaveOp("c", b"{}", "application/json", expected_version=7),
            ]
        )
        after = engine.save_snapshot("d", b"[2]", "application/json")
        release.set()
        held.result()
        assert before.result() == 1 and after.result() == 1
        with pytest.raises(EngineVersionConflict, match="operations\\[2\\]") as raised:
            refused.result()
        assert raised.value.current_version == 1  # "c" as it is, the batch undone
        assert [k.key for k in engine.list_keys()] == ["a", "c", "d"]
        assert engine.load_snapshot("b") is None
        # Nothing of the batch took a version either.
        assert engine.save_snapshot("b", b"{}", "application/json").result() == 1
        assert engine.save_snapshot("c", b"{}", "application/json", 1).result() == 2
