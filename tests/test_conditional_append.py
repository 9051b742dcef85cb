"""Conditional appends and reads from the end (issue 21, items 7-8), in both engines.

In-process against the real engines (LMDB and PostgreSQL), so that what a
read costs can be counted: the records the engine hands the edge for a
newest-first read of ``n`` events are ``n``, however long the thread is.
The same behaviour over the wire, in all three clients, is in
``tests/test_event_side.py`` and the cross-language scenario.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from tests.support.postgres import PostgresServer, fresh_database
from turnstore.server.api.grpc.event_reads import commit_order_pages
from turnstore.server.storage import records
from turnstore.server.storage.config import EngineConfig, PostgresConfig
from turnstore.server.storage.errors import NextPositionConflictError, VersionConflictError
from turnstore.server.storage.interface import StorageEngine
from turnstore.server.storage.lmdb.engine import LmdbEngine
from turnstore.server.storage.postgres.engine import PostgresEngine
from turnstore.server.storage.values import NewEvent
from turnstore.v1 import turnstore_pb2 as pb


def envelope(event_id: str, size: int = 10) -> NewEvent:
    body = b'{"delta":"' + b"x" * size + b'"}'
    message = pb.EventEnvelope(event_id=event_id, type="text_delta", body=body)
    return NewEvent(event_id, message.SerializeToString())


@pytest.fixture(params=["lmdb", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageEngine]:
    opened: StorageEngine
    if request.param == "lmdb":
        opened = LmdbEngine.open(EngineConfig(tmp_path / "data"))
        yield opened
        opened.close()
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with fresh_database(server) as dsn:
        config = EngineConfig(data_dir=tmp_path / "unused")
        opened = PostgresEngine.open(config, PostgresConfig(dsn, pool_size=2))
        yield opened
        opened.close()


def thread() -> str:
    return f"t-{uuid.uuid4()}"


def test_an_append_at_the_expected_position_is_stored_and_a_stale_one_is_not(
    engine: StorageEngine,
) -> None:
    t = thread()
    assert engine.append(t, 1, [envelope("a")], expected_next_position=0).result(10) == [0]
    assert engine.append(t, 1, [envelope("b")], expected_next_position=1).result(10) == [1]
    stale = engine.append(t, 1, [envelope("c")], expected_next_position=1)
    with pytest.raises(NextPositionConflictError) as caught:
        stale.result(10)
    # The edge answers it as every version conflict, with the thread's next position.
    assert isinstance(caught.value, VersionConflictError)
    assert caught.value.reason == "version_conflict"
    assert caught.value.current_version == 2
    assert engine.event_count(t) == 2


def test_a_retry_of_stored_events_returns_their_positions_without_the_check(
    engine: StorageEngine,
) -> None:
    t = thread()
    engine.append(t, 1, [envelope("a"), envelope("b")], expected_next_position=0).result(10)
    engine.append(t, 1, [envelope("c")]).result(10)
    # The acknowledgement of the first append was "lost": its retry, with the
    # same events and the same (now stale) condition, gets the original positions.
    again = engine.append(t, 1, [envelope("a"), envelope("b")], expected_next_position=0)
    assert again.result(10) == [0, 1]
    assert engine.event_count(t) == 3


def test_a_refused_conditional_append_to_a_new_thread_leaves_no_thread(
    engine: StorageEngine,
) -> None:
    t = thread()
    with pytest.raises(NextPositionConflictError):
        engine.append(t, 1, [envelope("a")], expected_next_position=3).result(10)
    assert engine.event_count(t) == 0
    assert engine.view(t).epoch is None
    assert [s.thread_id for s in engine.list_threads()] == []
    # After a clear, positions restart at 0, and so does the expectation.
    engine.append(t, 1, [envelope("a")]).result(10)
    engine.clear(t).result(10)
    assert engine.append(t, 1, [envelope("b")], expected_next_position=0).result(10) == [0]


def test_a_failed_condition_does_not_fail_the_other_writes_of_its_commit(
    engine: StorageEngine,
) -> None:
    # Many writes queued at once share commits (group commit); the conditional
    # appends racing for one position: exactly one wins, every other write of
    # the same commits is stored.
    racing, other = thread(), thread()
    futures: list[tuple[str, Future[list[int]]]] = []
    for n in range(40):
        futures.append(
            ("race", engine.append(racing, 1, [envelope(f"r{n}")], expected_next_position=0))
        )
        futures.append(("other", engine.append(other, 1, [envelope(f"o{n}")])))
    won, lost = 0, 0
    for kind, future in futures:
        if kind == "other":
            future.result(10)
            continue
        try:
            assert future.result(10) == [0]
            won += 1
        except NextPositionConflictError:
            lost += 1
    assert (won, lost) == (1, 39)
    assert engine.event_count(racing) == 1
    assert engine.event_count(other) == 40


def _read(
    engine: StorageEngine,
    thread_id: str,
    offset: int,
    limit: int | None,
    newest_first: bool,
    counted: list[int] | None = None,
) -> list[int]:
    """The positions ReadEvents sends, with ``counted`` getting each engine read's size."""

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        result = fn(*args)
        if counted is not None and fn == engine.read_commit_order:
            counted.append(len(result))
        return result

    async def collect() -> list[int]:
        view = engine.view(thread_id)
        out: list[int] = []
        async for page in commit_order_pages(engine, run, view, offset, limit, newest_first):
            out += [pb.StoredEvent.FromString(records.unframe(value)).position for value in page]
        return out

    return asyncio.run(collect())


def test_reads_from_the_end_page_backwards_and_cost_what_they_return(
    engine: StorageEngine,
) -> None:
    t = thread()
    for start in range(0, 3000, 500):
        engine.append(t, 1, [envelope(f"e{n}") for n in range(start, start + 500)]).result(30)
    assert _read(engine, t, 0, 3, True) == [2999, 2998, 2997]
    assert _read(engine, t, 2, 3, True) == [2997, 2996, 2995]
    assert _read(engine, t, 2998, 10, True) == [1, 0]
    assert _read(engine, t, 3000, 10, True) == []
    assert _read(engine, t, 0, None, True) == list(range(2999, -1, -1))
    assert _read(engine, t, 10, 5, False) == [10, 11, 12, 13, 14]
    assert _read(engine, t, 2998, None, False) == [2998, 2999]
    counted: list[int] = []
    assert _read(engine, t, 0, 20, True, counted) == list(range(2999, 2979, -1))
    # The engine handed over 20 records for the last 20 of 3,000: not the thread.
    assert sum(counted) == 20
    counted.clear()
    _read(engine, t, 100, 600, True, counted)
    assert sum(counted) == 600


def test_a_window_of_large_events_is_narrowed_to_fit_a_message(engine: StorageEngine) -> None:
    # 40 events of 200 KiB: a message (4 MiB budget) holds about 20 of them,
    # so the newest-first read narrows its windows and still sends every event once.
    t = thread()
    for n in range(40):
        engine.append(t, 1, [envelope(f"big{n}", 200 * 1024)]).result(30)
    counted: list[int] = []
    assert _read(engine, t, 0, None, True, counted) == list(range(39, -1, -1))
    # Re-reading a narrowed window costs at most one window's worth more.
    assert sum(counted) <= 2 * 40
