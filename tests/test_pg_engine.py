"""The PostgreSQL engine called directly: what only PostgreSQL has.

Positions gap-free under concurrent appends from two engines (two daemons)
on one database, replay steps cut at their byte budget exactly where
LMDB's are, and a replay step that reads several turns (LMDB's stop at the
first finish) sent as the same messages. What every engine promises (idempotency across a reopen,
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
from turnstore.server.replay.parts import split_step
from turnstore.server.storage.config import EngineConfig, PostgresConfig
from turnstore.server.storage.lmdb.engine import LmdbEngine
from turnstore.server.storage.postgres.engine import PostgresEngine
from turnstore.server.storage.values import NewEvent, ReplayStep
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


# A message as the replay layer sends it: its events' positions, then its finishes' turns.
Message = tuple[tuple[int, ...], tuple[int, ...]]


def _history(
    opened: LmdbEngine | PostgresEngine,
    thread: str,
    start: int,
    finish_seq: int | None,
    max_events: int,
    max_bytes: int,
) -> tuple[list[Message], int, list[tuple[int, int]]]:
    """The replay from a cursor as the replay layer sends it: each message's events
    (positions), then its finishes (turns); the steps taken; the cursor after each message."""
    messages: list[Message] = []
    cursors: list[tuple[int, int]] = []
    steps = 0
    position, epoch = start, None
    while True:
        step = opened.replay_step(thread, epoch, position, finish_seq, max_events, None, max_bytes)
        steps += 1
        for part in split_step(step, position):
            first = part.next_position - len(part.events)
            events = tuple(range(first, part.next_position))
            finishes = tuple(finish.turn for _, finish in part.finishes)
            # A message's events all come before its finishes in the thread's history.
            assert not events or all(f.frontier >= part.next_position for _, f in part.finishes)
            if events or finishes:
                messages.append((events, finishes))
            cursors.append((part.next_position, part.next_finish_seq))
        epoch, position, finish_seq = step.epoch, step.next_position, step.next_finish_seq
        if step.at_end:
            return messages, steps, cursors


def _flat(messages: list[Message]) -> list[tuple[str, int]]:
    """The events and finishes of ``messages`` in the order a reader gets them."""
    flat: list[tuple[str, int]] = []
    for events, finishes in messages:
        flat += [("event", position) for position in events]
        flat += [("finish", turn) for turn in finishes]
    return flat


def test_a_replay_step_carries_several_turns_and_is_sent_as_lmdb_sends_them(
    engine: PostgresEngine, tmp_path: Path
) -> None:
    # Turns of 10 events finished one after the other, two turns written
    # interleaved and finished together, and empty turns finished between:
    # one step on either engine reads them all (LMDB took one step per finish
    # before issue 22), and cut at the finishes it makes the same messages,
    # from any cursor.
    thread = f"t-{uuid.uuid4()}"
    lmdb = LmdbEngine.open(EngineConfig(data_dir=tmp_path / "lmdb"))
    try:
        writes: list[tuple[int, int, bool]] = [(turn, 10, True) for turn in range(1, 6)]
        writes += [(6, 3, False), (7, 4, False), (6, 2, True), (8, 0, True), (9, 0, True)]
        writes += [(7, 1, True), (10, 5, False)]
        count = 0
        for turn, events, finish in writes:
            batch = [envelope(f"e{count + n}") for n in range(events)]
            count += events
            for opened in (lmdb, engine):
                if batch:
                    assert opened.append(thread, turn, batch, finish=finish).result(10)
                else:
                    assert opened.finish_turn(thread, turn).result(10) is not None
        whole = engine.replay_step(thread, None, 0, None, 512, None, 1 << 20)
        assert len(whole.events) == count and len(whole.finishes) == 9 and whole.at_end
        for max_events, max_bytes in [(512, 1 << 20), (7, 1 << 20), (512, 200), (1, 1 << 20)]:
            on_lmdb, lmdb_steps, _ = _history(lmdb, thread, 0, None, max_events, max_bytes)
            on_pg, pg_steps, cursors = _history(engine, thread, 0, None, max_events, max_bytes)
            # The same events and finishes in the same order; a budget may cut
            # the messages elsewhere (a PostgreSQL step's budget spans turns).
            flat = _flat(on_pg)
            assert flat == _flat(on_lmdb), (max_events, max_bytes)
            if max_events == 512 and max_bytes == 1 << 20:
                assert on_pg == on_lmdb
                assert (pg_steps, lmdb_steps) == (1, 1)
            # Resuming after any message gives exactly what came after it.
            for position, finish_seq in cursors:
                rest, _, _ = _history(engine, thread, position, finish_seq, max_events, max_bytes)
                tail = _flat(rest)
                assert flat[len(flat) - len(tail) :] == tail
                events_before = [p for message in on_pg for p in message[0] if p < position]
                assert len(events_before) == position
    finally:
        lmdb.close()
