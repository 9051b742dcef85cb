"""The storage engine on its own, one suite run on both backends (LMDB and PostgreSQL).

Each test gets an engine of its own store (``open_engine``: LMDB on a data
directory of the test's, PostgreSQL on a fresh database of the session's
server) and checks what ``StorageEngine`` promises whatever the backend:
record layout, chunked and bounded reads, clears, batches with a rejected
write, limits, snapshots, idempotency across a reopen, retention sweeps.
What only one backend has is tested beside it: tests/test_engine.py (LMDB:
map growth, the data directory lock) and tests/test_pg_engine.py
(PostgreSQL: two engines on one database, replay steps cut as LMDB's).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.engines import EngineOpener
from tests.support.postgres import PostgresServer, fresh_database
from turnstore.server.storage import records
from turnstore.server.storage.config import MIB
from turnstore.server.storage.errors import (
    EngineClosedError,
    EventIdConflictError,
    InvalidArgumentError,
    ThreadClearedError,
    TurnFinishedError,
    VersionConflictError,
)
from turnstore.server.storage.interface import StorageEngine
from turnstore.server.storage.values import NewEvent, ReadBudget, SweepResult, TurnCursor
from turnstore.v1 import turnstore_pb2 as pb

HOUR_NS = 3600 * 10**9


def envelope(text: str, size: int = 0) -> NewEvent:
    message = pb.EventEnvelope(
        event_id=f"id-{text}", type="text_delta", body=(text + "x" * size).encode()
    )
    return NewEvent(message.event_id, message.SerializeToString())


def body_of(record: bytes) -> str:
    body: bytes = pb.StoredEvent.FromString(records.unframe(record)).envelope.body
    return body.decode()


@pytest.fixture
def open_engine(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[EngineOpener]:
    """Opens engines of ``backend`` on the test's own store; all closed after the test."""
    with contextlib.ExitStack() as databases:

        def database() -> str:
            server: PostgresServer = request.getfixturevalue("postgres_server")
            return databases.enter_context(fresh_database(server))

        opener = EngineOpener(backend, tmp_path / "data", database)
        try:
            yield opener
        finally:
            opener.close()


@pytest.fixture
def engine(open_engine: EngineOpener) -> StorageEngine:
    """An engine of each backend in turn, with the default configuration."""
    return open_engine()


def test_the_engine_implements_every_call_of_the_interface(engine: StorageEngine) -> None:
    members = [
        name
        for name, value in vars(StorageEngine).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    ]
    assert len(members) > 20
    for name in members:
        wanted = getattr(StorageEngine, name)
        have = getattr(engine, name, None)
        assert have is not None, name
        if callable(wanted):
            have = getattr(type(engine), name)
            assert inspect.signature(have) == inspect.signature(wanted), name


def test_records_decode_as_stored_event_messages(engine: StorageEngine) -> None:
    positions = engine.append("t", 2**40, [envelope("a"), envelope("b")]).result(30)
    assert positions == [0, 1]
    chunk = engine.get_turn("t", 2**40)
    assert chunk is not None
    decoded = [pb.StoredEvent.FromString(records.unframe(value)) for value in chunk.events]
    # Joined, the stored values are a ReadEventsResponse as sent on the wire.
    wire = pb.ReadEventsResponse.FromString(b"".join(chunk.events))
    assert list(wire.events) == decoded
    assert [(e.position, e.turn, e.envelope.body) for e in decoded] == [
        (0, 2**40, b"a"),
        (1, 2**40, b"b"),
    ]
    assert all(e.stored_at_unix_nanos > 1_700_000_000 * 10**9 for e in decoded)


def test_turn_order_reads_resume_inside_a_turn(engine: StorageEngine) -> None:
    for index in range(5):
        engine.append("t", 2, [envelope(f"2.{index}")]).result(30)
        engine.append("t", 1, [envelope(f"1.{index}")]).result(30)
    engine.finish_turn("t", 9).result(30)
    view = engine.view("t")
    seen: list[tuple[int, bool, list[str]]] = []
    cursor: TurnCursor | None = TurnCursor()
    while cursor is not None:
        chunks, cursor = engine.read_turn_order(
            view, cursor, ReadBudget(3, MIB), include_empty=True
        )
        seen += [(c.turn, c.finished, [body_of(r) for r in c.events]) for c in chunks]
    assert seen == [
        (1, False, ["1.0", "1.1", "1.2"]),
        (1, False, ["1.3", "1.4"]),
        (2, False, ["2.0"]),
        (2, False, ["2.1", "2.2", "2.3"]),
        (2, False, ["2.4"]),
        (9, True, []),
    ]


def test_reads_are_bounded_by_their_view(engine: StorageEngine) -> None:
    engine.append("t", 1, [envelope("before")]).result(30)
    view = engine.view("t")
    engine.append("t", 1, [envelope("after")]).result(30)
    assert [body_of(r) for r in engine.read_commit_order(view, 0, ReadBudget(100, MIB))] == [
        "before"
    ]
    chunks, _ = engine.read_turn_order(
        view, TurnCursor(), ReadBudget(100, MIB), include_empty=False
    )
    assert [[body_of(r) for r in c.events] for c in chunks] == [["before"]]


def test_a_clear_gives_a_new_epoch_and_fails_reads_of_the_old_view(
    engine: StorageEngine,
) -> None:
    engine.append("t", 1, [envelope("a")], finish=True).result(30)
    old = engine.view("t")
    assert engine.clear("t").result(30) == 1
    assert engine.append("t", 1, [envelope("reborn")]).result(30) == [0]
    new = engine.view("t")
    assert new.epoch != old.epoch
    with pytest.raises(ThreadClearedError):
        engine.read_commit_order(old, 0, ReadBudget(10, MIB))
    assert [body_of(r) for r in engine.read_commit_order(new, 0, ReadBudget(10, MIB))] == ["reborn"]


def test_a_rejected_write_in_a_batch_leaves_the_others_committed(engine: StorageEngine) -> None:
    engine.finish_turn("t", 1).result(30)
    # Queue several writes at once so that they share one commit.
    futures = [
        engine.append("t", 2, [envelope("ok-1")]),
        engine.append("t", 1, [envelope("rejected")]),
        engine.append("t", 2, [envelope("ok-2")]),
    ]
    assert futures[0].result(30) == [0]
    with pytest.raises(TurnFinishedError):
        futures[1].result(30)
    assert futures[2].result(30) == [1]
    assert engine.event_count("t") == 2


def test_concurrent_appends_get_unique_gap_free_positions(engine: StorageEngine) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def writer(name: str) -> None:
        for index in range(50):
            (position,) = engine.append("t", 1, [envelope(f"{name}{index}")]).result(30)
            with lock:
                results.append(position)

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(200))


def test_writes_after_close_fail_cleanly(engine: StorageEngine) -> None:
    engine.close()
    with pytest.raises(EngineClosedError):
        engine.append("t", 1, [envelope("late")]).result(30)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda e: e.append("", 1, [envelope("a")]), "thread_id"),
        (lambda e: e.append("t" * 257, 1, [envelope("a")]), "thread_id"),
        (lambda e: e.append("t", 1, []), "events"),
        (lambda e: e.append("t", 1, [envelope("a")] * 10_001), "events"),
        (lambda e: e.append("t", 1, [NewEvent("", b"")]), "events[0].event_id"),
        (lambda e: e.append("t", 1, [envelope("a", MIB)]), "events[0]"),
        (lambda e: e.append("t", -1, [envelope("a")]), "turn"),
        (lambda e: e.save_snapshot("", b"{}", "application/json"), "key"),
        (lambda e: e.save_snapshot("k", b"x" * (32 * MIB + 1), "a/b"), "data"),
    ],
)
def test_limits_are_enforced_with_the_field_named(
    engine: StorageEngine, call: Callable[[StorageEngine], object], field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        call(engine)
    assert raised.value.field == field


def test_snapshots_keep_the_newest_versions_and_check_the_expected_one(
    open_engine: EngineOpener,
) -> None:
    engine = open_engine(snapshot_versions_kept=2)
    versions = [
        engine.save_snapshot("k", f"{n}".encode(), "text/plain").result(30) for n in range(4)
    ]
    assert versions == [1, 2, 3, 4]
    latest = engine.load_snapshot("k")
    assert latest is not None
    assert (latest.version, latest.data, latest.content_type) == (4, b"3", "text/plain")
    assert [s.version for s in engine.list_snapshot_versions("k")] == [4, 3]
    assert engine.load_snapshot("other") is None
    with pytest.raises(VersionConflictError):
        engine.save_snapshot("k", b"x", "text/plain", expected_version=3).result(30)
    assert engine.delete_snapshots("k").result(30) == 2
    assert engine.load_snapshot("k") is None
    assert engine.save_snapshot("k", b"v5", "text/plain", expected_version=0).result(30) == 5


def test_reads_stop_at_their_byte_budget(engine: StorageEngine) -> None:
    for index in range(10):
        engine.append("t", 1, [envelope(f"{index}.", 1000)]).result(30)
    view = engine.view("t")
    first = engine.read_commit_order(view, 0, ReadBudget(100, 2500))
    assert [body_of(v)[:2] for v in first] == ["0.", "1.", "2."]
    chunks, cursor = engine.read_turn_order(view, TurnCursor(), ReadBudget(100, 2500), False)
    assert [len(c.events) for c in chunks] == [3]
    assert cursor is not None and cursor.after_position == 2
    step = engine.replay_step("t", None, 0, None, 100, None, 2500)
    assert len(step.events) == 3 and step.next_position == 3 and not step.at_end


def test_an_event_id_is_stored_once_even_after_a_reopen(open_engine: EngineOpener) -> None:
    first = open_engine()
    assert first.append("t", 1, [envelope("a"), envelope("b")]).result(30) == [0, 1]
    first.close()
    second = open_engine()
    assert second.append("t", 1, [envelope("b"), envelope("c")]).result(30) == [1, 2]
    with pytest.raises(EventIdConflictError):
        second.append("t", 2, [envelope("a")]).result(30)
    assert second.event_count("t") == 3


def test_a_sweep_removes_only_what_was_written_before_the_age(open_engine: EngineOpener) -> None:
    engine = open_engine(retain_threads_for_seconds=3600)
    engine.append("old", 1, [envelope("a"), envelope("b")]).result(30)
    engine.append("fresh", 1, [envelope("c")]).result(30)
    written = {thread.thread_id: thread.last_write_ns for thread in engine.list_threads()}
    assert written["old"] < written["fresh"]
    # The cutoff is the fresh thread's write: only what is older goes.
    result = engine.sweep_retention(now_ns=written["fresh"] + HOUR_NS)
    assert result == SweepResult(removed_threads=1, removed_events=2, removed_conversations=0)
    assert [thread.thread_id for thread in engine.list_threads()] == ["fresh"]
    stats = engine.retention_stats()
    assert (stats.sweeps, stats.removed_threads, stats.removed_events) == (1, 1, 2)
