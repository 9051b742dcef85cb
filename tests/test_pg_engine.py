"""The PostgreSQL engine called directly: what the daemon tests cannot pin down exactly.

Idempotency by event id across a reopen, a clear giving the thread a new
epoch (a read bounded by the old view fails), kept snapshot versions, a
retention sweep with a chosen "now", and positions gap-free under
concurrent appends from two engines (two daemons) on one database.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import PostgresServer, fresh_database
from turnstore.server.storage.errors import (
    EventIdConflictError,
    ThreadClearedError,
    VersionConflictError,
)
from turnstore.server.storage.lmdb.engine import Engine
from turnstore.server.storage.postgres.engine import PostgresEngine
from turnstore.server.storage.values import (
    EngineConfig,
    NewEvent,
    PostgresConfig,
    ReadBudget,
    ReplayStep,
    SweepResult,
)
from turnstore.v1 import turnstore_pb2 as pb

HOUR_NS = 3600 * 10**9


def envelope(event_id: str) -> NewEvent:
    message = pb.EventEnvelope(event_id=event_id, type="text_delta", body=b'{"delta":"x"}')
    return NewEvent(event_id, message.SerializeToString())


@pytest.fixture
def dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A database of its own on the session's server (a sweep here removes only our threads)."""
    with fresh_database(postgres_server) as database:
        yield database


def open_engine(dsn: str, tmp_path: Path, retain: float | None = None) -> PostgresEngine:
    config = EngineConfig(
        data_dir=tmp_path / "unused", snapshot_versions_kept=2, retain_threads_for_seconds=retain
    )
    return PostgresEngine.open(config, PostgresConfig(dsn, pool_size=2))


@pytest.fixture
def engine(dsn: str, tmp_path: Path) -> Iterator[PostgresEngine]:
    opened = open_engine(dsn, tmp_path, retain=3600)
    yield opened
    opened.close()


def test_an_event_id_is_stored_once_even_after_a_reopen(dsn: str, tmp_path: Path) -> None:
    thread = f"t-{uuid.uuid4()}"
    first = open_engine(dsn, tmp_path)
    try:
        assert first.append(thread, 1, [envelope("a"), envelope("b")]).result(10) == [0, 1]
    finally:
        first.close()
    second = open_engine(dsn, tmp_path)
    try:
        assert second.append(thread, 1, [envelope("b"), envelope("c")]).result(10) == [1, 2]
        with pytest.raises(EventIdConflictError):
            second.append(thread, 2, [envelope("a")]).result(10)
        assert second.event_count(thread) == 3
    finally:
        second.close()


def test_a_clear_gives_a_new_epoch_and_fails_reads_of_the_old_view(
    engine: PostgresEngine,
) -> None:
    thread = f"t-{uuid.uuid4()}"
    engine.append(thread, 1, [envelope("a")], finish=True).result(10)
    old = engine.view(thread)
    assert engine.clear(thread).result(10) == 1
    assert engine.append(thread, 1, [envelope("a")]).result(10) == [0]
    new = engine.view(thread)
    assert new.thread_number != old.thread_number
    with pytest.raises(ThreadClearedError):
        engine.read_commit_order(old, 0, ReadBudget(10, 1 << 20))
    assert len(engine.read_commit_order(new, 0, ReadBudget(10, 1 << 20))) == 1


def test_snapshots_keep_the_newest_versions_and_check_the_expected_one(
    engine: PostgresEngine,
) -> None:
    key = f"k-{uuid.uuid4()}"
    for n in range(1, 4):
        assert engine.save_snapshot(key, b"v%d" % n, "text/plain").result(10) == n
    assert [s.version for s in engine.list_snapshot_versions(key)] == [3, 2]
    with pytest.raises(VersionConflictError):
        engine.save_snapshot(key, b"x", "text/plain", expected_version=2).result(10)
    assert engine.delete_snapshots(key).result(10) == 2
    assert engine.load_snapshot(key) is None
    assert engine.save_snapshot(key, b"v4", "text/plain", expected_version=0).result(10) == 4


def test_a_sweep_removes_only_what_was_written_before_the_age(engine: PostgresEngine) -> None:
    engine.append("old", 1, [envelope("a"), envelope("b")]).result(10)
    engine.append("fresh", 1, [envelope("a")]).result(10)
    written = {thread.thread_id: thread.last_write_ns for thread in engine.list_threads()}
    assert written["old"] < written["fresh"]
    # The cutoff is the fresh thread's write: only what is older goes.
    result = engine.sweep_retention(now_ns=written["fresh"] + HOUR_NS)
    assert result == SweepResult(removed_threads=1, removed_events=2, removed_conversations=0)
    assert [thread.thread_id for thread in engine.list_threads()] == ["fresh"]
    stats = engine.retention_stats()
    assert (stats.sweeps, stats.removed_threads, stats.removed_events) == (1, 1, 2)


def test_two_engines_appending_to_one_turn_give_gap_free_positions(
    dsn: str, tmp_path: Path
) -> None:
    thread = f"t-{uuid.uuid4()}"
    engines = [open_engine(dsn, tmp_path) for _ in range(2)]
    got: list[list[int]] = [[], []]

    def write(index: int) -> None:
        futures = [engines[index].append(thread, 1, [envelope(f"{index}-{n}")]) for n in range(200)]
        got[index] = [future.result(30)[0] for future in futures]

    try:
        workers = [threading.Thread(target=write, args=(n,)) for n in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert sorted(got[0] + got[1]) == list(range(400))
        assert got[0] == sorted(got[0]) and got[1] == sorted(got[1])
    finally:
        for opened in engines:
            opened.close()


def test_replay_steps_cut_at_their_byte_budget_exactly_as_on_lmdb(
    engine: PostgresEngine, tmp_path: Path
) -> None:
    # Records of very different sizes, many more than a first page of rows:
    # each step must end with the record that reaches its bytes, as LMDB's does.
    thread = f"t-{uuid.uuid4()}"
    sizes = [10 + (n * 7919) % 3000 for n in range(300)]
    batch = []
    for n, size in enumerate(sizes):
        message = pb.EventEnvelope(event_id=f"e{n}", type="text_delta", body=b"x" * size)
        batch.append(NewEvent(message.event_id, message.SerializeToString()))
    lmdb = Engine.open(EngineConfig(data_dir=tmp_path / "lmdb"))
    try:
        for start in range(0, 300, 100):
            assert lmdb.append(thread, 1, batch[start : start + 100]).result(10)
            assert engine.append(thread, 1, batch[start : start + 100]).result(10)

        def steps(opened: Engine | PostgresEngine, max_events: int, max_bytes: int) -> list[int]:
            counts, position = [], 0
            while position < 300:
                step: ReplayStep = opened.replay_step(
                    thread, None, position, None, max_events, None, max_bytes
                )
                counts.append(len(step.events))
                position = step.next_position
            return counts

        # Budgets that some records' sizes sum to exactly, past the first page too.
        lengths = [len(r) for r in lmdb.replay_step(thread, None, 0, None, 300, None).events]
        exact = [sum(lengths[:37]), sum(lengths[5:150])]
        budgets = [(4096, 1), (4096, 16 * 1024), (4096, 64 * 1024), (50, 64 * 1024)]
        budgets += [(4096, exact[0]), (4096, exact[1]), (4096, 1 << 22)]
        for max_events, max_bytes in budgets:
            on_lmdb = steps(lmdb, max_events, max_bytes)
            assert steps(engine, max_events, max_bytes) == on_lmdb, (max_events, max_bytes)
        assert steps(engine, 4096, 1) == [1] * 300
        assert steps(engine, 4096, exact[0])[0] == 37
        assert steps(engine, 4096, 1 << 22) == [300]
    finally:
        lmdb.close()
