"""The PostgreSQL engine called directly: what only PostgreSQL has.

Positions gap-free under concurrent appends from two engines (two daemons)
on one database, and replay steps cut at their byte budget exactly where
LMDB's are. What every engine promises (idempotency across a reopen,
clears, snapshots, retention sweeps, ...) is tested once for both backends
in tests/test_storage_engine.py.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import PostgresServer, fresh_database
from turnstore.server.storage.lmdb.engine import LmdbEngine
from turnstore.server.storage.postgres.engine import PostgresEngine
from turnstore.server.storage.values import (
    EngineConfig,
    NewEvent,
    PostgresConfig,
    ReplayStep,
)
from turnstore.v1 import turnstore_pb2 as pb


def envelope(event_id: str) -> NewEvent:
    message = pb.EventEnvelope(event_id=event_id, type="text_delta", body=b'{"delta":"x"}')
    return NewEvent(event_id, message.SerializeToString())


@pytest.fixture
def dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """A database of its own on the session's server."""
    with fresh_database(postgres_server) as database:
        yield database


def open_engine(dsn: str, tmp_path: Path) -> PostgresEngine:
    config = EngineConfig(data_dir=tmp_path / "unused")
    return PostgresEngine.open(config, PostgresConfig(dsn, pool_size=2))


@pytest.fixture
def engine(dsn: str, tmp_path: Path) -> Iterator[PostgresEngine]:
    opened = open_engine(dsn, tmp_path)
    yield opened
    opened.close()


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
    lmdb = LmdbEngine.open(EngineConfig(data_dir=tmp_path / "lmdb"))
    try:
        for start in range(0, 300, 100):
            assert lmdb.append(thread, 1, batch[start : start + 100]).result(10)
            assert engine.append(thread, 1, batch[start : start + 100]).result(10)

        def steps(
            opened: LmdbEngine | PostgresEngine, max_events: int, max_bytes: int
        ) -> list[int]:
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
