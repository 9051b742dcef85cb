"""The storage engine on its own: layout, chunked reads, map growth, limits."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from turnstore.server.storage import records
from turnstore.server.storage.errors import (
    DataDirLockedError,
    EngineClosedError,
    InvalidArgumentError,
    StorageFullError,
    ThreadClearedError,
    TurnFinishedError,
)
from turnstore.server.storage.interface import StorageEngine
from turnstore.server.storage.lmdb.engine import LmdbEngine
from turnstore.server.storage.values import (
    MIB,
    EngineConfig,
    Limits,
    NewEvent,
    ReadBudget,
    TurnCursor,
)
from turnstore.v1 import turnstore_pb2 as pb


def envelope(text: str, size: int = 0) -> NewEvent:
    message = pb.EventEnvelope(
        event_id=f"id-{text}", type="text_delta", body=(text + "x" * size).encode()
    )
    return NewEvent(message.event_id, message.SerializeToString())


def body_of(record: bytes) -> str:
    body: bytes = pb.StoredEvent.FromString(records.unframe(record)).envelope.body
    return body.decode()


@pytest.fixture
def engine(data_dir: Path) -> Iterator[LmdbEngine]:
    opened = LmdbEngine.open(EngineConfig(data_dir))
    yield opened
    opened.close()


def test_the_lmdb_engine_implements_every_call_of_the_interface(engine: LmdbEngine) -> None:
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
            have = getattr(LmdbEngine, name)
            assert inspect.signature(have) == inspect.signature(wanted), name


def test_records_decode_as_stored_event_messages(engine: LmdbEngine) -> None:
    positions = engine.append("t", 2**40, [envelope("a"), envelope("b")]).result()
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


def test_turn_order_reads_resume_inside_a_turn(engine: LmdbEngine) -> None:
    for index in range(5):
        engine.append("t", 2, [envelope(f"2.{index}")]).result()
        engine.append("t", 1, [envelope(f"1.{index}")]).result()
    engine.finish_turn("t", 9).result()
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


def test_reads_are_bounded_by_their_view(engine: LmdbEngine) -> None:
    engine.append("t", 1, [envelope("before")]).result()
    view = engine.view("t")
    engine.append("t", 1, [envelope("after")]).result()
    assert [body_of(r) for r in engine.read_commit_order(view, 0, ReadBudget(100, MIB))] == [
        "before"
    ]
    chunks, _ = engine.read_turn_order(
        view, TurnCursor(), ReadBudget(100, MIB), include_empty=False
    )
    assert [[body_of(r) for r in c.events] for c in chunks] == [["before"]]


def test_a_read_of_a_cleared_thread_aborts(engine: LmdbEngine) -> None:
    engine.append("t", 1, [envelope("a")]).result()
    view = engine.view("t")
    engine.clear("t").result()
    engine.append("t", 1, [envelope("reborn")]).result()
    with pytest.raises(ThreadClearedError):
        engine.read_commit_order(view, 0, ReadBudget(10, MIB))


def test_a_rejected_write_in_a_batch_leaves_the_others_committed(engine: LmdbEngine) -> None:
    engine.finish_turn("t", 1).result()
    # Queue several writes at once so that they share one commit.
    futures = [
        engine.append("t", 2, [envelope("ok-1")]),
        engine.append("t", 1, [envelope("rejected")]),
        engine.append("t", 2, [envelope("ok-2")]),
    ]
    assert futures[0].result() == [0]
    with pytest.raises(TurnFinishedError):
        futures[1].result()
    assert futures[2].result() == [1]
    assert engine.event_count("t") == 2


def test_concurrent_appends_get_unique_gap_free_positions(engine: LmdbEngine) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def writer(name: str) -> None:
        for index in range(50):
            (position,) = engine.append("t", 1, [envelope(f"{name}{index}")]).result()
            with lock:
                results.append(position)

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(200))


def test_map_grows_then_fills_without_tearing(data_dir: Path) -> None:
    config = EngineConfig(data_dir, initial_map_bytes=1 * MIB, max_map_bytes=4 * MIB)
    engine = LmdbEngine.open(config)
    acknowledged = 0
    with pytest.raises(StorageFullError, match="ceiling"):
        for index in range(1000):
            engine.append("t", 1, [envelope(f"{index}.", 60_000)]).result()
            acknowledged += 1
    assert engine.map_size == 4 * MIB
    assert 8 < acknowledged < 70
    # Reads still work, and hold exactly the acknowledged events.
    assert engine.event_count("t") == acknowledged
    chunk = engine.get_turn("t", 1)
    assert chunk is not None
    assert len(chunk.events) == acknowledged
    # Small writes that fit still succeed or fail cleanly; then reopen cleanly.
    engine.close()
    reopened = LmdbEngine.open(config)
    assert reopened.event_count("t") == acknowledged
    reopened.close()


def test_a_second_engine_on_the_same_directory_is_refused(
    engine: LmdbEngine, data_dir: Path
) -> None:
    with pytest.raises(DataDirLockedError, match="in use by another turnstore process"):
        LmdbEngine.open(EngineConfig(data_dir))


def test_writes_after_close_fail_cleanly(data_dir: Path) -> None:
    engine = LmdbEngine.open(EngineConfig(data_dir))
    engine.close()
    with pytest.raises(EngineClosedError):
        engine.append("t", 1, [envelope("late")]).result()


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
    engine: LmdbEngine, call: object, field: str
) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        call(engine)  # type: ignore[operator]
    assert raised.value.field == field


def test_limits_must_fit_lmdb_keys() -> None:
    with pytest.raises(ValueError, match="511"):
        Limits(max_thread_id_bytes=600)


def test_snapshot_versions_grow_and_old_ones_are_dropped(data_dir: Path) -> None:
    engine = LmdbEngine.open(EngineConfig(data_dir, snapshot_versions_kept=2))
    try:
        versions = [
            engine.save_snapshot("k", f"{n}".encode(), "text/plain").result() for n in range(4)
        ]
        assert versions == [1, 2, 3, 4]
        latest = engine.load_snapshot("k")
        assert latest is not None
        assert (latest.version, latest.data, latest.content_type) == (4, b"3", "text/plain")
        assert engine.load_snapshot("other") is None
    finally:
        engine.close()


def test_reads_stop_at_their_byte_budget(engine: LmdbEngine) -> None:
    for index in range(10):
        engine.append("t", 1, [envelope(f"{index}.", 1000)]).result()
    view = engine.view("t")
    first = engine.read_commit_order(view, 0, ReadBudget(100, 2500))
    assert [body_of(v)[:2] for v in first] == ["0.", "1.", "2."]
    chunks, cursor = engine.read_turn_order(view, TurnCursor(), ReadBudget(100, 2500), False)
    assert [len(c.events) for c in chunks] == [3]
    assert cursor is not None and cursor.after_position == 2
    step = engine.replay_step("t", None, 0, None, 100, None, 2500)
    assert len(step.events) == 3 and step.next_position == 3 and not step.at_end
