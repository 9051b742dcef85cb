"""Retention: threads and conversation keys not written for an age are removed.

The engine tests drive sweeps directly with a chosen "now", so what expires
is exact; one test lets the background sweep run on a short interval. The
daemon test starts ``turnstore serve`` with the retention flags.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonStarter
from tests.support.eventually import eventually, eventually_async
from turnstore import (
    AgentEventEnvelope,
    ConversationSnapshot,
    StoredEvent,
    ThreadCleared,
    TurnstoreClient,
)
from turnstore.server.storage.config import EngineConfig
from turnstore.server.storage.lmdb.engine import (
    RETENTION_BATCH_EVENTS,
    RETENTION_BATCH_ITEMS,
    LmdbEngine,
)
from turnstore.server.storage.values import NewEvent, RetentionStats, SweepResult
from turnstore.v1 import turnstore_pb2 as pb

HOUR_NS = 3600 * 10**9
JSON = "application/json"


def envelope(event_id: str) -> NewEvent:
    message = pb.EventEnvelope(event_id=event_id, type="text_delta", body=b'{"delta":"x"}')
    return NewEvent(event_id, message.SerializeToString())


@pytest.fixture
def engine(data_dir: Path) -> Iterator[LmdbEngine]:
    """An engine keeping threads and keys for an hour, sweeping only when asked."""
    opened = LmdbEngine.open(
        EngineConfig(
            data_dir,
            retain_threads_for_seconds=3600,
            retain_conversations_for_seconds=3600,
            retention_interval_seconds=3600,
        )
    )
    yield opened
    opened.close()


def test_a_sweep_removes_what_was_last_written_before_the_age(engine: LmdbEngine) -> None:
    engine.append("old", 1, [envelope("a"), envelope("b")]).result()
    engine.finish_turn("old", 1).result()
    engine.save_snapshot("old-key", b"{}", JSON).result()
    engine.save_snapshot("old-key", b"[]", JSON).result()
    middle = time.time_ns()
    engine.append("new", 1, [envelope("c")]).result()
    engine.save_snapshot("new-key", b"{}", JSON).result()
    engine.delete_snapshots("deleted-key").result()  # unknown: nothing is written

    # An hour after `middle`, everything written before it has expired.
    result = engine.sweep_retention(now_ns=middle + HOUR_NS)
    assert result == SweepResult(removed_threads=1, removed_events=2, removed_conversations=1)
    assert engine.view("old").epoch is None
    assert engine.get_turn("old", 1) is None
    assert engine.load_snapshot("old-key") is None
    assert engine.list_snapshot_versions("old-key") == []
    assert engine.event_count("new") == 1
    loaded = engine.load_snapshot("new-key")
    assert loaded is not None and loaded.version == 1
    stored = engine.storage_stats()
    assert (stored.threads, stored.events, stored.turns, stored.finished_turns) == (1, 1, 1, 0)
    assert (stored.conversations, stored.snapshot_versions) == (1, 1)
    # Nothing of the old thread remains: its event ids are free, positions restart,
    # and the removed key's versions start again.
    assert engine.append("old", 2, [envelope("a")]).result() == [0]
    assert engine.save_snapshot("old-key", b"{}", JSON).result() == 1
    retention = engine.retention_stats()
    assert retention.enabled
    assert (retention.sweeps, retention.last_sweep_ns, retention.last_error) == (
        1,
        middle + HOUR_NS,
        None,
    )
    assert (retention.removed_threads, retention.removed_events) == (1, 2)
    assert retention.removed_conversations == 1
    # A sweep at the real time removes nothing written within the hour.
    assert engine.sweep_retention() == SweepResult(0, 0, 0)


def test_what_was_written_after_the_sweep_judged_it_is_kept(engine: LmdbEngine) -> None:
    engine.append("t", 1, [envelope("a")]).result()
    engine.save_snapshot("k", b"{}", JSON).result()
    judged = time.time_ns()
    # The agent writes between the sweep's scan and its removal: a finish and a
    # delete are writes too.
    engine.finish_turn("t", 1).result()
    engine.delete_snapshots("k").result()
    assert engine.remove_thread_if_idle("t", judged).result() is None
    assert engine.remove_conversation_if_idle("k", judged).result() is None
    turn = engine.get_turn("t", 1)
    assert turn is not None and turn.finished
    # A retried append that stores nothing is no write: judged later, both go.
    engine.append("t", 1, [envelope("a")]).result()
    later = time.time_ns()
    assert engine.remove_thread_if_idle("t", later).result() == 1
    assert engine.remove_conversation_if_idle("k", later).result() == 0  # deleted: 0 versions
    assert engine.remove_thread_if_idle("t", later).result() is None  # gone already
    assert engine.storage_stats().threads == 0
    # The deleted key's counter went with it.
    assert engine.save_snapshot("k", b"{}", JSON).result() == 1


def test_a_sweep_removes_in_small_writes_that_appends_interleave_with(engine: LmdbEngine) -> None:
    small = [f"small-{n:03d}" for n in range(200)]
    big = [f"big-{n}" for n in range(3)]
    futures = [engine.append(thread, 1, [envelope("e")]) for thread in small]
    futures += [
        engine.append(thread, 1, [envelope(f"e{i}") for i in range(8000)]) for thread in big
    ]
    for future in futures:
        future.result()
    events_of = {**dict.fromkeys(small, 1), **dict.fromkeys(big, 8000)}
    commits: list[set[str]] = []
    live: list[object] = []

    def listen(changed: set[str]) -> None:
        commits.append(set(changed))
        if not live and changed & events_of.keys():
            # Once the first removals are committed, an agent appends.
            live.append(engine.append("live", 1, [envelope("now")]))

    engine.add_commit_listener(listen)
    result = engine.sweep_retention(now_ns=time.time_ns() + HOUR_NS)
    assert result == SweepResult(203, 200 + 3 * 8000, 0)
    removals = [commit & events_of.keys() for commit in commits]
    assert sum(len(removed) for removed in removals) == 203
    for removed in removals:
        assert len(removed) <= RETENTION_BATCH_ITEMS
        assert len(removed) == 1 or sum(events_of[t] for t in removed) <= RETENTION_BATCH_EVENTS
    last_removal = max(n for n, removed in enumerate(removals) if removed)
    first_live = min(n for n, commit in enumerate(commits) if "live" in commit)
    # The append was committed while the sweep was still removing.
    assert first_live < last_removal
    # The live thread was written after the sweep's "now" minus the hour: kept.
    assert engine.event_count("live") == 1
    assert engine.storage_stats().threads == 1


def test_the_background_sweep_runs_every_interval(data_dir: Path) -> None:
    engine = LmdbEngine.open(
        EngineConfig(
            data_dir,
            retain_threads_for_seconds=0.5,
            retain_conversations_for_seconds=0.5,
            retention_interval_seconds=0.05,
        )
    )
    try:
        engine.append("stale", 1, [envelope("a")]).result()
        engine.save_snapshot("stale-key", b"{}", JSON).result()
        kept = 0

        def swept() -> RetentionStats | None:
            nonlocal kept
            # Written far more often than every half second: never expires.
            engine.append("alive", 1, [envelope(f"alive-{kept}")]).result()
            kept += 1
            stats = engine.retention_stats()
            return stats if stats.removed_threads and stats.removed_conversations else None

        stats = eventually(swept, 20, what="a sweep to remove the stale thread", interval=0.01)
        assert (stats.removed_threads, stats.removed_conversations) == (1, 1)
        assert stats.sweeps >= 1 and stats.last_error is None
        assert engine.view("stale").epoch is None
        assert engine.load_snapshot("stale-key") is None
        assert engine.event_count("alive") == kept
    finally:
        closing = threading.Thread(target=engine.close)
        closing.start()
        closing.join(10)
        assert not closing.is_alive(), "close() waits for the retention thread"


@pytest.mark.parametrize(
    "settings",
    [
        {"retain_threads_for_seconds": 0},
        {"retain_conversations_for_seconds": -1},
        {"retention_interval_seconds": 0},
    ],
)
def test_retention_settings_are_checked(data_dir: Path, settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="positive"):
        EngineConfig(data_dir, **settings)


async def test_a_daemon_removes_threads_and_keys_not_written_for_the_age(
    data_dir: Path,
    start_daemon: DaemonStarter,
) -> None:
    daemon = start_daemon(
        "lmdb",
        "--retain-threads-for",
        "2",
        "--retain-conversations-for",
        "2",
        "--retention-interval",
        "0.1",
        data_dir=data_dir,
    )
    try:
        async with TurnstoreClient(daemon.target) as client:
            await client.events.append("stale", 1, AgentEventEnvelope.new({"type": "x"}))
            await client.history("stale-key").save(ConversationSnapshot([], []))

            async def follow() -> list[object]:
                items: list[object] = []
                async with client.events.replay("stale", follow=True) as replay:
                    async for item in replay:
                        items.append(item)
                        if isinstance(item, ThreadCleared):
                            return items
                return items

            follower = asyncio.create_task(follow())
            written = 0

            async def swept() -> Any:
                nonlocal written
                # Written far more often than every 2 seconds: never expire.
                await client.events.append("alive", 1, AgentEventEnvelope.new({"type": "x"}))
                await client.history("alive-key").save(ConversationSnapshot([written], [False]))
                written += 1
                stats = await client.admin.stats()
                removed = stats.retention_removed_threads and stats.retention_removed_conversations
                return stats if removed else None

            stats = await eventually_async(swept, what="a sweep to remove the stale thread")
            assert stats.retention_enabled
            assert (stats.retention_removed_threads, stats.retention_removed_events) == (1, 1)
            assert stats.retention_removed_conversations == 1
            assert await client.events.event_count("stale") == 0
            assert await client.history("stale-key").load() is None
            assert await client.events.event_count("alive") == written
            assert await client.history("alive-key").load() == ConversationSnapshot(
                [written - 1], [False]
            )
            # A follower of the removed thread is told it was cleared.
            items = await asyncio.wait_for(follower, 10)
            assert isinstance(items[0], StoredEvent)
            assert isinstance(items[-1], ThreadCleared)
    finally:
        assert daemon.stop() == 0
