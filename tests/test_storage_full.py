"""A full database, a full disk and killed backups, against real daemons.

A database at its ceiling can always be emptied (the delete reserve) and is
written again without a restart; a full filesystem is RESOURCE_EXHAUSTED,
not INTERNAL, and writes resume when space returns; a backup cut short by a
kill leaves nothing behind after the next start; files are owner-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import stat
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from tests.support.daemon import Daemon, DaemonStarter
from tests.support.eventually import eventually_async
from tests.support.open_gate import OpenGate, tmpfs
from turnstore import (
    AgentEventEnvelope,
    ConversationSnapshot,
    InvalidArgumentError,
    StorageFullError,
    TurnstoreClient,
)
from turnstore.server.storage.config import MIB, EngineConfig
from turnstore.server.storage.errors import DiskIOError
from turnstore.server.storage.errors import StorageFullError as EngineStorageFull
from turnstore.server.storage.lmdb import disk
from turnstore.server.storage.lmdb.engine import LmdbEngine
from turnstore.server.storage.values import NewEvent
from turnstore.v1 import turnstore_pb2 as pb

DEADLINE_SECONDS = 60.0


def blob(label: str, size: int) -> AgentEventEnvelope:
    return AgentEventEnvelope.new({"type": "blob", "label": label, "data": "x" * size})


async def fill(
    client: TurnstoreClient, threads: list[str], acknowledged: dict[str, int], size: int
) -> None:
    """Append batches of events round-robin until the daemon refuses with storage_full."""
    for round_number in range(10_000):
        thread = threads[round_number % len(threads)]
        batch = [blob(f"{thread}-{round_number}-{n}", size) for n in range(4)]
        try:
            await client.events.append_many(thread, 1, batch)
        except StorageFullError:
            return
        acknowledged[thread] = acknowledged.get(thread, 0) + len(batch)
    raise AssertionError("the database never filled")


def snapshot(fill: str, size: int) -> ConversationSnapshot:
    return ConversationSnapshot(messages=[{"m": fill * size}], pinned=[False])


def log_events(daemon: Daemon, name: str) -> list[dict[str, object]]:
    out = []
    for line in daemon.log_lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == name:
            out.append(record)
    return out


def scrape(address: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


# -- the delete reserve ---------------------------------------------------------


async def test_a_full_database_is_emptied_and_written_again_without_a_restart(
    data_dir: Path,
    start_daemon: DaemonStarter,
) -> None:
    daemon = start_daemon(
        "lmdb", "--max-db-size", "8MiB", "--metrics-listen", "127.0.0.1:0", data_dir=data_dir
    )
    first = daemon.serving
    threads = [f"t-{n}" for n in range(8)]
    acknowledged: dict[str, int] = {}
    async with TurnstoreClient(daemon.target) as client:
        await client.history("conv").save(snapshot("y", 200_000))
        await fill(client, threads, acknowledged, 20_000)
        stats = await client.admin.stats()
        assert stats.max_db_bytes == 8 * MIB
        assert stats.write_limit_bytes == 7 * MIB  # the default reserve: 1 MiB here
        # Writes stopped at the limit, not at the ceiling: the reserve is untouched.
        assert 0.8 * stats.max_db_bytes < stats.used_bytes <= stats.write_limit_bytes
        metrics = scrape(first["metrics"])
        assert metrics["turnstore_write_limit_bytes"] == 7 * MIB
        assert metrics["turnstore_max_db_bytes"] == 8 * MIB
        assert 0.9 < metrics["turnstore_used_ratio"] <= 1.0
        command = ["stats", "--target", daemon.target, "--format", "text"]
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "turnstore.cli.admin", *command, stdout=subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0
        printed = out.decode()
        assert f"{stats.used_fraction:.0%} of the 7.0 MiB writes may fill" in printed
        # Reads still see every acknowledged event.
        for thread, count in acknowledged.items():
            assert await client.events.event_count(thread) == count
        # Warned once per level crossed, on the way up.
        assert [r["level_percent"] for r in log_events(daemon, "database_filling")] == [80, 90]

        # Everything can be removed, and then written again.
        for thread in threads:
            await client.events.clear(thread)
        assert await client.history("conv").delete() == 1
        await client.events.append("after", 1, blob("after", 100))
        emptied = await client.admin.stats()
        assert emptied.used_bytes < 0.1 * emptied.max_db_bytes
        assert [r["below_percent"] for r in log_events(daemon, "database_space_recovered")] == [80]

        # A second fill reuses the freed pages: the file never passes the ceiling.
        again: dict[str, int] = {}
        await fill(client, threads, again, 20_000)
        assert sum(again.values()) >= 0.8 * sum(acknowledged.values())
        refilled = await client.admin.stats()
        assert refilled.data_file_bytes <= 8 * MIB
        assert refilled.used_bytes <= refilled.write_limit_bytes
        assert len(log_events(daemon, "database_filling")) == 4
        for thread in threads:
            await client.events.clear(thread)
    assert daemon.stop() == 0


async def test_retention_empties_a_full_database_and_writes_resume(
    data_dir: Path, start_daemon: DaemonStarter
) -> None:
    daemon = start_daemon(
        "lmdb",
        "--max-db-size",
        "8MiB",
        "--retain-threads-for",
        "1s",
        "--retention-interval",
        "0.2s",
        data_dir=data_dir,
    )
    acknowledged: dict[str, int] = {}
    async with TurnstoreClient(daemon.target) as client:
        # One thread, written without pause, so retention cannot take it while it fills.
        await fill(client, ["filler"], acknowledged, 20_000)
        assert acknowledged["filler"] > 100

        async def appended() -> bool:
            try:
                # The same batch as the one refused at the end of the fill.
                await client.events.append_many(
                    "later", 1, [blob(f"later-{n}", 20_000) for n in range(4)]
                )
            except StorageFullError:
                return False
            return True

        await eventually_async(appended, DEADLINE_SECONDS, what="retention to make room")
        stats = await client.admin.stats()
        assert stats.retention_removed_threads >= 1
        assert stats.retention_removed_events >= acknowledged["filler"]
        assert stats.retention_last_error == ""
        assert await client.events.event_count("filler") == 0
        assert await client.events.event_count("later") == 4
    assert daemon.stop() == 0


def test_the_engine_refuses_additions_at_the_reserve_and_takes_deletes(tmp_path: Path) -> None:
    config = EngineConfig(tmp_path / "data", initial_map_bytes=4 * MIB, max_map_bytes=4 * MIB)
    engine = LmdbEngine.open(config)
    try:
        stored = 0
        with pytest.raises(EngineStorageFull, match="reserve"):
            for index in range(1000):
                event = pb.EventEnvelope(event_id=f"e{index}", body=b"x" * 30_000)
                engine.append(
                    "t", 1, [NewEvent(event.event_id, event.SerializeToString())]
                ).result()
                stored += 1
        usage = engine.space_usage()
        assert usage.write_limit_bytes == 3 * MIB
        assert 2.5 * MIB < usage.used_bytes <= usage.write_limit_bytes
        # A refused snapshot and a refused finish leave nothing; the clear goes through.
        with pytest.raises(EngineStorageFull):
            engine.save_snapshot("k", b"y" * 600_000, "application/json").result()
        assert engine.load_snapshot("k") is None
        assert engine.event_count("t") == stored
        # Also after a restart.
        engine.close()
        engine = LmdbEngine.open(config)
        assert engine.clear("t").result() == stored
        # At once, one append needing more than the reserve: it needs the pages
        # the clear freed, which LMDB reuses only after another commit.
        again = [
            NewEvent(
                f"a{n}", pb.EventEnvelope(event_id=f"a{n}", body=b"x" * 30_000).SerializeToString()
            )
            for n in range(60)
        ]
        assert engine.append("t", 1, again).result() == list(range(60))
        assert engine.space_usage().used_bytes > 1.5 * MIB
    finally:
        engine.close()


def test_a_batch_at_the_ceiling_still_commits_its_deletes(tmp_path: Path) -> None:
    # No reserve: LMDB's own ceiling is reached, and a clear shares its
    # transaction with an append that cannot fit.
    config = EngineConfig(
        tmp_path / "data",
        initial_map_bytes=2 * MIB,
        max_map_bytes=2 * MIB,
        delete_reserve_bytes=0,
    )
    engine = LmdbEngine.open(config)
    try:

        def big(name: str, size: int) -> NewEvent:
            event = pb.EventEnvelope(event_id=name, body=b"x" * size)
            return NewEvent(name, event.SerializeToString())

        stored = 0
        with pytest.raises(EngineStorageFull, match="ceiling"):
            for index in range(1000):
                engine.append("t", 1, [big(f"e{index}", 60_000)]).result()
                stored += 1
        # Hold the writer in a write of its own so that the next two share a batch.
        release = threading.Event()
        holding = threading.Event()

        def hold(txn: lmdb.Transaction, now_ns: int) -> None:
            holding.set()
            release.wait(10)

        # The one way to line up a batch: a private submit.
        held = engine._submit(None, hold)
        assert holding.wait(10)
        cleared = engine.clear("t")
        refused = engine.append("u", 1, [big("u0", 900_000)])
        release.set()
        held.result()
        assert cleared.result() == stored
        with pytest.raises(EngineStorageFull):
            refused.result()
        assert engine.event_count("t") == 0
        assert engine.event_count("u") == 0
    finally:
        engine.close()


def test_disk_failures_are_told_apart(tmp_path: Path) -> None:
    full = disk.as_engine_error(OSError(errno.ENOSPC, "No space left"), tmp_path, "the write")
    assert isinstance(full, EngineStorageFull) and "disk" in str(full)
    # LMDB reports a short write as EIO: with plenty of space left it is a failing disk.
    lmdb_eio = lmdb.Error("mdb_txn_commit: " + os.strerror(errno.EIO))
    assert disk.disk_errno(lmdb_eio) == errno.EIO
    free = disk.available_bytes(tmp_path)
    assert free is not None
    expected = EngineStorageFull if free < disk.FULL_DISK_MARGIN else DiskIOError
    assert isinstance(disk.as_engine_error(lmdb_eio, tmp_path, "the write"), expected)
    assert disk.as_engine_error(ValueError("a bug"), tmp_path, "the write") is None
    assert disk.as_engine_error(lmdb.Error("mdb_get: something else"), tmp_path, "x") is None


# -- a full filesystem ----------------------------------------------------------------


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted for the test (the tests run as root), unmounted after."""
    with tmpfs(tmp_path / "small-fs", "16m") as mount_point:
        yield mount_point


async def test_a_full_filesystem_is_resource_exhausted_and_writes_resume(
    small_filesystem: Path,
    start_daemon: DaemonStarter,
) -> None:
    ballast = small_filesystem / "ballast"
    ballast.write_bytes(b"\0" * (6 * MIB))
    data_dir = small_filesystem / "data"
    daemon = start_daemon(data_dir=data_dir)
    acknowledged: dict[str, int] = {}
    async with TurnstoreClient(daemon.target) as client:
        await fill(client, ["a", "b"], acknowledged, 50_000)
        assert sum(acknowledged.values()) > 20
        with pytest.raises(StorageFullError, match="disk"):
            await client.events.append_many("a", 1, [blob("more", 50_000) for _ in range(8)])
        with pytest.raises(StorageFullError, match="disk"):
            await client.history("k").save(snapshot("z", 500_000))
        for thread, count in acknowledged.items():
            assert await client.events.event_count(thread) == count
        # Space returns: the same daemon takes writes again.
        ballast.unlink()
        more = [blob(f"more-{n}", 50_000) for n in range(8)]
        positions = await client.events.append_many("a", 1, more)
        assert positions == list(range(acknowledged["a"], acknowledged["a"] + 8))
        acknowledged["a"] += 8
        await client.history("k").save(snapshot("z", 500_000))
    assert daemon.stop() == 0
    # Nothing acknowledged was lost.
    restarted = start_daemon(data_dir=data_dir)
    async with TurnstoreClient(restarted.target) as client:
        for thread, count in acknowledged.items():
            assert await client.events.event_count(thread) == count
        assert await client.history("k").load() is not None
    assert restarted.stop() == 0


# -- backups --------------------------------------------------------------------------


async def test_a_daemon_killed_during_a_backup_leaves_no_partial_directory(
    tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    data_dir = tmp_path / "data"
    with tmpfs(tmp_path / "backups") as backups:
        # Things the daemon did not create, some looking like its own: never touched.
        (backups / ".nightly.partial-decoy123").mkdir()
        (backups / "keep.txt").write_text("keep me")
        daemon = start_daemon("lmdb", "--backup-dir", str(backups), data_dir=data_dir)
        assert daemon.process is not None
        pid = daemon.process.pid
        async with TurnstoreClient(daemon.target) as client:
            for n in range(8):
                await client.events.append_many(
                    f"t{n % 4}", 1, [blob(f"{n}-{k}", 25_000) for k in range(4)]
                )
            # The daemon is held as it opens the copy's file, its partial
            # directory made, and killed there: in the middle of the backup.
            with OpenGate(backups, lambda opener, path: opener == pid) as gate:
                backup = asyncio.create_task(client.admin.backup("nightly"))
                held = await asyncio.to_thread(gate.wait)
                daemon.kill()
            with contextlib.suppress(BaseException):
                await backup
        caught = held.parent
        assert held.name == "data.mdb" and caught.parent == backups, held
        assert caught.name.startswith(".nightly.partial-"), caught
        assert caught.is_dir()  # the kill left it behind
        serving = daemon.start()
        assert not caught.exists()
        assert serving["removed_partial_backups"] == [str(caught)]
        leftovers = sorted(n for n in os.listdir(backups) if ".partial-" in n)
        assert leftovers == [".nightly.partial-decoy123"]
        assert (backups / "keep.txt").read_text() == "keep me"
        assert not (data_dir / "backups-in-progress").exists()
        # Backups work as before afterwards.
        async with TurnstoreClient(daemon.target) as client:
            result = await client.admin.backup("after")
            assert result.bytes_written > 0 and result.dest_dir == str(backups / "after")
        assert daemon.stop() == 0


async def test_backup_paths_too_long_for_the_file_system_are_invalid(
    data_dir: Path, tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    daemon = start_daemon("lmdb", "--backup-dir", str(backups), data_dir=data_dir)
    (backups / "a-file").write_text("x")
    async with TurnstoreClient(daemon.target) as client:
        refused = {
            str(backups / ("x" * 300)): "over the file system's limit of 255",
            "x" * 300 + "/below": "over the file system's limit of 255",
            "y" * 240: "over the limit of 237",
            "/".join(["d" * 200] * 25): "over the path limit",
            "a-file/below": "parent directory",
        }
        for dest, problem in refused.items():
            with pytest.raises(InvalidArgumentError, match=problem):
                await client.admin.backup(dest)
        # The longest name that fits is taken.
        longest = backups / ("z" * 237)
        result = await client.admin.backup(longest.name)
        assert result.bytes_written == (longest / "data.mdb").stat().st_size
    assert daemon.stop() == 0


# -- owner-only files -----------------------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_data_directory_and_its_files_are_owner_only(
    tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    data_dir = tmp_path / "fresh" / "data"
    (tmp_path / "backups").mkdir()
    previous = os.umask(0o022)  # what a daemon usually runs with
    try:
        daemon = start_daemon("lmdb", "--backup-dir", str(tmp_path / "backups"), data_dir=data_dir)
        async with TurnstoreClient(daemon.target) as client:
            await client.events.append(f"t-{uuid.uuid4()}", 1, blob("a", 10))
            backup = await client.admin.backup("backup")
        assert daemon.stop() == 0
    finally:
        os.umask(previous)
    assert mode_of(data_dir) == 0o700
    for name in ("data.mdb", "lock.mdb", "turnstore.lock"):
        assert mode_of(data_dir / name) == 0o600, name
    assert mode_of(Path(backup.dest_dir)) == 0o700
    assert mode_of(Path(backup.dest_dir) / "data.mdb") == 0o600
    # Files an older version left readable are made owner-only at the next start.
    os.chmod(data_dir / "data.mdb", 0o644)
    os.chmod(data_dir / "turnstore.lock", 0o644)
    daemon = start_daemon(data_dir=data_dir)
    assert mode_of(data_dir / "data.mdb") == 0o600
    assert mode_of(data_dir / "turnstore.lock") == 0o600
    assert daemon.stop() == 0
