"""The user-facing scenarios against in-process SQLite, run inside ``bench.client``.

The kind of store the agent runtime's crate ships: Python's ``sqlite3`` in
the agent's own process, one database file in WAL mode with
``synchronous=FULL`` (every commit fsyncs the WAL), one row per event
(``events(thread, turn, seq, json)``, the flat envelope JSON encoded with
orjson) and a ``turns`` table for the finish barrier. Each append is its own
transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``): it checks that the turn is
not finished, takes the next ``seq`` of the turn and inserts the row.

An asyncio agent must not block its event loop, so every call runs on the
store's one worker thread (as aiosqlite does): concurrent agents queue
there, and their commits are never shared. Reads decode every row's JSON
with orjson.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson

from bench.common import Result
from bench.traits_common import (
    TextDeltas,
    encode,
    load_turns,
    many_agents,
    one_agent,
    repeated_reads,
    tag,
)
from turnstore import AgentEventEnvelope

PAGE: Final = 1000
SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    thread TEXT NOT NULL,
    turn INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    json BLOB NOT NULL,
    PRIMARY KEY (thread, turn, seq)
);
CREATE TABLE IF NOT EXISTS turns (
    thread TEXT NOT NULL,
    turn INTEGER NOT NULL,
    finished INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (thread, turn)
);
"""
NEXT_SEQ: Final = "SELECT COALESCE(MAX(seq) + 1, 0) FROM events WHERE thread = ? AND turn = ?"

T = TypeVar("T")


def connect(path: str) -> sqlite3.Connection:
    """The database at ``path`` (created with its directory): WAL, ``synchronous=FULL``.

    ``isolation_level=None``: transactions are the explicit ``BEGIN``/``COMMIT``.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.executescript(SCHEMA)
    return connection


class TurnFinished(Exception):
    """An append to a finished turn (the crate's store refuses it)."""


class SqliteEvents:
    """An EventStore's calls on one SQLite connection, run on one worker thread."""

    def __init__(self, path: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db = connect(path)

    async def _run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _append(self, thread: str, turn: int, json: bytes) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT finished FROM turns WHERE thread = ? AND turn = ?", (thread, turn)
            ).fetchone()
            if row is not None and row[0]:
                raise TurnFinished(f"cannot append to finished turn {turn}")
            if row is None:
                db.execute("INSERT INTO turns (thread, turn) VALUES (?, ?)", (thread, turn))
            seq: int = db.execute(NEXT_SEQ, (thread, turn)).fetchone()[0]
            db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (thread, turn, seq, json))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return seq

    def _finish(self, thread: str, turn: int) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO turns (thread, turn, finished) VALUES (?, ?, 1)"
            " ON CONFLICT (thread, turn) DO UPDATE SET finished = 1",
            (thread, turn),
        )
        db.execute("COMMIT")

    def _rows(self, thread: str) -> list[Any]:
        query = "SELECT json FROM events WHERE thread = ? ORDER BY turn, seq"
        return [orjson.loads(row[0]) for row in self._db.execute(query, (thread,))]

    async def append(self, thread: str, turn: int, envelope: AgentEventEnvelope) -> int:
        """Insert the envelope and commit (fsync); returns its ``seq`` in the turn."""
        json = encode(envelope)
        return await self._run(lambda: self._append(thread, turn, json))

    async def finish_turn(self, thread: str, turn: int) -> None:
        """Mark the turn finished and commit (fsync)."""
        await self._run(lambda: self._finish(thread, turn))

    async def get_events(self, thread: str) -> list[Any]:
        """Every event of the thread, decoded, turn by turn in append order."""
        return await self._run(lambda: self._rows(thread))

    async def replay(self, thread: str) -> int:
        """Read the thread in pages of 1,000 rows (keyset paging), decoding each; the count."""
        query = (
            "SELECT turn, seq, json FROM events WHERE thread = ? AND (turn, seq) > (?, ?)"
            " ORDER BY turn, seq LIMIT ?"
        )
        count, after = 0, (-1, -1)
        while True:
            rows = await self._run(
                lambda: self._db.execute(query, (thread, *after, PAGE)).fetchall()  # noqa: B023
            )
            count += sum(1 for _, _, json in rows if orjson.loads(json)["type"])
            if len(rows) < PAGE:
                return count
            after = (rows[-1][0], rows[-1][1])

    def load(self, thread: str, events: int, per_turn: int) -> None:
        """Fill the thread with finished turns in one transaction (setup)."""
        factory, db = TextDeltas(), self._db
        db.execute("BEGIN IMMEDIATE")
        for turn, count in load_turns(events, per_turn):
            rows = [(thread, turn, seq, encode(e)) for seq, e in enumerate(factory.batch(count))]
            db.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", rows)
            db.execute("INSERT INTO turns VALUES (?, ?, 1)", (thread, turn))
        db.execute("COMMIT")

    def count(self, thread: str) -> int:
        """The events stored in the thread."""
        row = self._db.execute("SELECT COUNT(*) FROM events WHERE thread = ?", (thread,))
        return int(row.fetchone()[0])

    def close(self) -> None:
        """Close the connection and stop the worker thread."""
        self._executor.shutdown(wait=True)
        self._db.close()


def _info() -> Result:
    return {"sqlite": sqlite3.sqlite_version, "journal_mode": "wal", "synchronous": "full"}


async def agent(path: str, events_per_turn: int, duration: float, warmup: float) -> Result:
    """One agent: awaited appends, each committed, a finish after every ``events_per_turn``."""
    store = SqliteEvents(path)
    try:
        thread = f"trait-agent-{tag()}"
        result = await one_agent(
            store.append, store.finish_turn, thread, events_per_turn, duration, warmup
        )
    finally:
        store.close()
    return {**result, **_info()}


async def agents(path: str, concurrencies: list[int], duration: float, warmup: float) -> Result:
    """N agents sharing one store (one connection, one worker thread), each on its own thread."""
    store = SqliteEvents(path)
    try:
        result = await many_agents(
            store.append, f"trait-agents-{tag()}", concurrencies, duration, warmup
        )
    finally:
        store.close()
    return {**result, **_info()}


def load(path: str, thread: str, events: int, per_turn: int) -> Result:
    """Fill ``thread`` (setup, not measured)."""
    started = time.perf_counter()
    store = SqliteEvents(path)
    try:
        store.load(thread, events, per_turn)
        stored = store.count(thread)
    finally:
        store.close()
    elapsed = time.perf_counter() - started
    return {"stored": stored, "elapsed_s": elapsed, "rate_per_s": events / elapsed}


async def read(
    path: str, thread: str, expected: int, how: str, duration: float, min_repeats: int
) -> Result:
    """Decoded reads of the whole thread: ``get_events`` (one query) or a paged ``replay``."""
    store = SqliteEvents(path)
    try:

        async def get_events() -> int:
            return sum(1 for event in await store.get_events(thread) if event["type"])

        async def replay() -> int:
            return await store.replay(thread)

        reader = {"get_events": get_events, "replay": replay}[how]
        result = await repeated_reads(reader, expected, duration, min_repeats)
    finally:
        store.close()
    return {**result, "how": how, **_info()}


SCENARIOS: Final[dict[str, Callable[..., Any]]] = {
    "sqlite-trait-agent": agent,
    "sqlite-trait-agents": agents,
    "sqlite-trait-load": load,
    "sqlite-trait-read": read,
}


def run(scenario: str, params: dict[str, Any]) -> Result:
    """Run one scenario (coroutines in a fresh event loop)."""
    outcome = SCENARIOS[scenario](**params)
    if isinstance(outcome, Coroutine):
        outcome = asyncio.run(outcome)
    result: Result = outcome
    return result
