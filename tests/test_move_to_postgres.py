"""A host's LMDB data moves into PostgreSQL with ``turnstore export`` then ``import``.

The test runs the commands docs/operations.md ("Moving a host to
PostgreSQL") gives, as subprocesses of the real ``turnstore``: the LMDB
daemon serves the host's data directory, ``turnstore export --output``,
a daemon on a new PostgreSQL database, ``turnstore import --input``,
``turnstore stats`` on both. Then every thread (positions, turns, finished
flags, event bytes) and every latest snapshot is the same on both, and the
agents go on on PostgreSQL: the next append of a thread takes the next
position, a reader resumes from its cursor, finished turns stay finished,
event ids stay idempotent, a snapshot saves on from the version it loaded.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.daemon import Daemon
from tests.test_operations import (
    THREAD_A,
    THREAD_B,
    event,
    everything,
    populate,
    snapshot,
    write_odd_content,
)
from turnstore import (
    CaughtUp,
    StoredEvent,
    ThreadCleared,
    TurnFinished,
    TurnFinishedError,
    TurnstoreClient,
)

LONG_THREAD = "long"
LONG_EVENTS = 1234  # more than two of the import's 500-event appends
CLEARED_THREAD = "cleared-once"
# The counts the stats of both daemons must show.
COMPARED = ("threads", "events", "turns", "finished_turns", "conversations")


async def turnstore(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``turnstore ARGS`` (``python -m turnstore``) without blocking the event loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "turnstore",
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return subprocess.CompletedProcess(list(args), process.returncode, out, err)


async def write_host_data(client: TurnstoreClient) -> None:
    """What a host's agents left: the operations tests' content, a long thread in
    three turns (one unfinished), and a thread cleared once and written again."""
    await populate(client)
    for turn, count in ((1, 600), (2, 600), (3, LONG_EVENTS - 1200)):
        start = sum((600, 600)[: turn - 1])
        batch = [event(start + n, f"long-{turn}") for n in range(count)]
        await client.events.append_many(LONG_THREAD, turn, batch)
        if turn < 3:
            await client.events.finish_turn(LONG_THREAD, turn)
    await client.events.append_many(CLEARED_THREAD, 1, [event(n, "before") for n in range(5)])
    await client.events.clear(CLEARED_THREAD)
    await client.events.append_many(CLEARED_THREAD, 1, [event(n, "after") for n in range(3)])


async def stats_json(target: str) -> dict[str, Any]:
    shown = await turnstore("stats", "--target", target, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    parsed: dict[str, Any] = json.loads(shown.stdout)
    return parsed


async def cursor_of(target: str, thread: str) -> tuple[int | None, int | None]:
    """(last position, epoch) of a reader that read the whole thread on ``target``."""
    async with TurnstoreClient(target) as client, client.events.replay(thread) as replay:
        _ = [item async for item in replay]
        return replay.last_position, replay.epoch


async def test_a_hosts_lmdb_data_moves_into_postgresql_and_goes_on_there(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    # The host's daemon, on its data directory, with what its agents wrote.
    lmdb = start_daemon("lmdb")
    async with TurnstoreClient(lmdb.target) as client:
        await write_host_data(client)
    async with grpc.aio.insecure_channel(lmdb.target) as raw:
        await write_odd_content(raw)
    # The readers' cursors before the move.
    threads = [THREAD_A, THREAD_B, LONG_THREAD, CLEARED_THREAD]
    old_cursors = {thread: await cursor_of(lmdb.target, thread) for thread in threads}
    assert old_cursors[THREAD_A][0] == 5

    # 1. Export from the LMDB daemon (its agents stopped writing).
    exported = tmp_path / "turnstore-export.jsonl"
    done = await turnstore("export", "--target", lmdb.target, "--output", str(exported))
    assert done.returncode == 0, done.stderr
    assert b"exported 5 threads (1250 events, 7 finished turns) and 3 snapshots" in done.stderr, (
        done.stderr
    )

    # 2. A daemon on PostgreSQL (it creates its schema), 3. the import into it.
    postgres = start_daemon("postgres")
    done = await turnstore("import", "--target", postgres.target, "--input", str(exported))
    assert done.returncode == 0, done.stderr
    # Piped, the report is JSON: every event where it was, every finish and snapshot done.
    assert json.loads(done.stdout) == {
        "threads": 5,
        "events": 1250,
        "positions_moved": 0,
        "turns_finished": 7,
        "turns_already_finished": 0,
        "snapshots_saved": 3,
        "snapshots_unchanged": 0,
    }

    # 4. The stats agree, and so does everything stored.
    before, after = await stats_json(lmdb.target), await stats_json(postgres.target)
    assert {name: after[name] for name in COMPARED} == {name: before[name] for name in COMPARED}
    assert (after["threads"], after["events"]) == (5, 1250)
    assert await everything(postgres.target) == await everything(lmdb.target)
    assert lmdb.stop() == 0

    # The agents go on on PostgreSQL.
    async with TurnstoreClient(postgres.target) as client:
        # A reader resumes from its position. The old daemon's epoch may be this one's
        # (the resume goes on: the positions are the same) or not (thread_cleared: the
        # reader reads the thread again); never a wrong event.
        epochs_differ = 0
        for thread, (old_position, old_epoch) in old_cursors.items():
            new_position, new_epoch = await cursor_of(postgres.target, thread)
            assert new_position == old_position is not None
            stale = [i async for i in client.events.replay(thread, old_position, epoch=old_epoch)]
            if new_epoch == old_epoch:
                assert stale == [CaughtUp(old_position + 1)]
            else:
                assert stale == [ThreadCleared(old_position + 1)]
                epochs_differ += 1
        assert epochs_differ >= 1  # so both answers are seen (numbers are each engine's own)
        old_cursor = old_cursors[THREAD_A]
        follower = client.events.replay(
            THREAD_A, after=old_cursor[0], follow=True, until_turn_finished=3
        )
        items = aiter(follower)
        assert await anext(items) == CaughtUp(6)
        # The next append takes the next position, and the follower receives it.
        assert await client.events.append(THREAD_A, 3, event(6, "moved")) == 6
        received = await anext(items)
        assert isinstance(received, StoredEvent) and received.position == 6
        assert received.envelope == event(6, "moved")
        await client.events.finish_turn(THREAD_A, 3)
        assert await anext(items) == TurnFinished(3, 2, 6)
        assert [item async for item in items] == []
        assert await client.events.append(LONG_THREAD, 3, event(LONG_EVENTS, "on")) == LONG_EVENTS
        assert await client.events.append(CLEARED_THREAD, 1, event(3, "after")) == 3
        # Finished turns stay finished; an event id stored before the move is stored once.
        with pytest.raises(TurnFinishedError):
            await client.events.append(THREAD_B, 2, event(99))
        assert await client.events.append(THREAD_B, 1, event(13)) == 3
        assert await client.events.event_count(THREAD_B) == 4
        # A snapshot saves on from the version the agent loads: versions restart at 1.
        assert await client.history("conv-b").load() == snapshot("b5")
        assert [k.version async for k in client.admin.list_keys() if k.key == "conv-b"] == [1]
        saved = await client.history("conv-b").save_versioned(snapshot("b6"), expected_version=1)
        assert saved == 2


async def test_a_second_pass_after_the_writers_stop_imports_only_what_is_new(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    # The first pass runs while the host's agents still write; the second, once
    # they stopped, brings what they wrote meanwhile (docs/operations.md).
    lmdb, postgres = start_daemon("lmdb"), start_daemon("postgres")
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    async with TurnstoreClient(lmdb.target) as client:
        await write_host_data(client)
        done = await turnstore("export", "--target", lmdb.target, "--output", str(first))
        assert done.returncode == 0, done.stderr
        done = await turnstore("import", "--target", postgres.target, "--input", str(first))
        assert done.returncode == 0, done.stderr
        # Meanwhile on the host: a turn goes on and finishes, a turn of a long thread
        # finishes, a new thread, a new snapshot version, and a thread is cleared and
        # written again.
        await client.events.append(THREAD_A, 3, event(6, "meanwhile"))
        await client.events.finish_turn(THREAD_A, 3)
        await client.events.finish_turn(LONG_THREAD, 3)
        await client.events.append_many("late", 1, [event(n, "late") for n in range(3)])
        await client.history("conv-a").save(snapshot("a3"))
        await client.events.clear(CLEARED_THREAD)
        await client.events.append_many(CLEARED_THREAD, 2, [event(n, "again") for n in range(2)])
    done = await turnstore("export", "--target", lmdb.target, "--output", str(second))
    assert done.returncode == 0, done.stderr
    done = await turnstore("import", "--target", postgres.target, "--input", str(second))
    assert done.returncode == 0, done.stderr
    all_events = 10 + LONG_EVENTS + 2 + 1 + 3  # those of the first pass are no-ops
    assert json.loads(done.stdout) == {
        "threads": 5,
        "events": all_events,
        # The cleared thread's new events went after its old ones: the report says so.
        "positions_moved": 2,
        "turns_finished": 2,
        "turns_already_finished": 6,
        "snapshots_saved": 1,
        "snapshots_unchanged": 1,
    }
    # The documented remedy: clear that thread on the target, import the file again.
    done = await turnstore("clear", CLEARED_THREAD, "--yes", "--target", postgres.target)
    assert done.returncode == 0, done.stderr
    done = await turnstore("import", "--target", postgres.target, "--input", str(second))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["events"], report["positions_moved"]) == (all_events, 0)
    before, after = await stats_json(lmdb.target), await stats_json(postgres.target)
    assert {name: after[name] for name in COMPARED} == {name: before[name] for name in COMPARED}
    assert await everything(postgres.target) == await everything(lmdb.target)
