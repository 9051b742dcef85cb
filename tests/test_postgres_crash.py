"""Crash safety on PostgreSQL: SIGKILL daemons and stop the database under load.

Two ``turnstore serve --backend postgres`` daemons share a PostgreSQL
cluster of this module's own, so stopping it never disturbs the session's
``postgres_server``. Writers (real clients on both daemons, through the
shared append stream and through unary calls) append single events and
batches to a few threads, finish turns and save snapshots with expected
versions, recording what was acknowledged. A fault plan runs during the
load, each fault once a number of further acknowledgements arrived (a
count, never a time): SIGKILL one daemon and restart it, or ``pg_ctl stop
-m immediate`` the database and start it again once writers have seen it
gone. A writer treats ``UnavailableError`` (its daemon gone, or
``database_unavailable``) and a passed deadline as "outcome unknown" and
sends the same call again (the same event ids, the same expected version)
with a bounded backoff until it is answered or the run's budget ends.

Then, through each daemon:

- the checks of tests/test_crash.py (:func:`tests.test_crash.check_thread`):
  every acknowledged append stored once, unchanged, at its acknowledged
  positions and turn; positions gap-free from 0; no event id twice, and an
  append whose outcome was unknown stored whole or not at all; refused
  appends absent; acknowledged finishes still finished, and no turn finished
  that nobody tried to finish;
- reads in turn order from any offset agree with the events stored, and both
  daemons read the same history;
- snapshots: every acknowledged save got exactly its expected version + 1,
  so versions rise one by one and are never given twice; a save refused with
  ``version_conflict`` was preceded by a save of that key whose outcome was
  unknown and that did commit; every kept version holds exactly the
  snapshot saved as it, and the latest acknowledged one loads;
- no call failed while both daemons and the database were up, and every
  call was answered within the budget (the fleet recovered by itself).

``python -m tests.support.soak --backend postgres`` runs the same loop with more faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final, TypeVar

import pytest

from tests.support.daemon import Daemon
from tests.support.postgres import PASSWORD, PostgresServer, postgres_daemon_args, start_postgres
from tests.test_crash import (
    ACKED,
    REJECTED,
    UNKNOWN,
    AppendAttempt,
    ThreadModel,
    check_thread,
)
from turnstore import (
    AgentEventEnvelope,
    ConversationSnapshot,
    DeadlineExceededError,
    RetryPolicy,
    TurnAlreadyFinishedError,
    TurnFinishedError,
    TurnstoreClient,
    UnavailableError,
    VersionConflictError,
)
from turnstore.events import WriteMode

T = TypeVar("T")

THREADS: Final = 3
KEYS: Final = 2
WRITERS: Final = 8
# Acknowledgements between two faults, drawn uniformly, and after the last one.
ACKS_BETWEEN_FAULTS: Final = (20, 80)
ACKS_AFTER_LAST_FAULT: Final = 40
# What a run may take at most (it fails past it), far above what it needs.
BUDGET_SECONDS_PER_FAULT: Final = 15.0
CALL_TIMEOUT: Final = 10.0
# Every version stays kept, so each can be checked.
KEPT_VERSIONS: Final = 100_000
# A writer's own retries after an unknown outcome, as an application would
# do them: a backoff between tries, never a wait standing in for a condition.
BACKOFF: Final = RetryPolicy(attempts=2, initial_backoff=0.05, max_backoff=0.4)
# Who the faults hit, in turn: daemon 0, daemon 1, then the database (None).
FAULT_CYCLE: Final[tuple[int | None, ...]] = (0, 1, None)


@dataclass
class VersionedKey:
    """The saves of one conversation key, made one at a time with expected versions."""

    key: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The highest version whose snapshot is known, and each version's tag.
    known: int = 0
    versions: dict[int, str] = field(default_factory=dict)
    acked: list[int] = field(default_factory=list)
    sent: dict[str, ConversationSnapshot] = field(default_factory=dict)
    # Saves whose outcome was unknown and that were not found stored (yet).
    unknown: list[str] = field(default_factory=list)


@dataclass
class Totals:
    daemon_kills: int = 0
    database_stops: int = 0
    acked_appends: int = 0
    acked_events: int = 0
    rejected_appends: int = 0
    acked_finishes: int = 0
    acked_saves: int = 0
    # Saves whose answer was lost, found stored by a retry's version conflict.
    saves_found_after_unknown: int = 0
    # Calls that failed without a verdict (then were sent again).
    unknown_outcomes: int = 0
    # ... of which a later try was acknowledged, or found the first one committed.
    answered_after_unknown: int = 0
    in_flight_at_fault: int = 0
    unanswered: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class PostgresCrashLoop:
    """The daemons, the models of every thread and key, the writers and the faults."""

    def __init__(self, postgres: PostgresServer, root: Path, faults: int, seed: int) -> None:
        self.postgres = postgres
        self.rng = random.Random(seed)
        args = [*postgres_daemon_args(postgres), "--snapshot-versions", str(KEPT_VERSIONS)]
        self.daemons = [Daemon(root / f"unused-{n}", extra_args=args) for n in range(2)]
        self.plan = [FAULT_CYCLE[n % len(FAULT_CYCLE)] for n in range(faults)]
        self.threads = [ThreadModel(f"pg-crash-thread-{n}") for n in range(THREADS)]
        self.keys = [VersionedKey(f"pg-crash-key-{n}") for n in range(KEYS)]
        self.totals = Totals()
        self.tags = 0
        self.acks = 0
        self.unavailable = 0
        self.in_flight = 0
        # Whether every daemon and the database are up, and a count bumped at
        # each fault and recovery: a call that starts and fails in one
        # healthy stretch failed while nothing was down.
        self.healthy = True
        self.stretch = 0
        self.failed_while_up: list[str] = []
        self.stopping = False
        self.deadline = time.monotonic() + BUDGET_SECONDS_PER_FAULT * (faults + 1)
        self.progress = asyncio.Event()
        # Each writer's client, with the daemon it talks to.
        self.clients: list[tuple[int, TurnstoreClient]] = []

    def fail(self, message: str) -> AssertionError:
        tails = []
        for n, daemon in enumerate(self.daemons):
            process = daemon.process
            status = None if process is None else process.poll()
            state = "running" if status is None else f"exited with status {status}"
            tails.append(
                f"-- daemon {n} {state}; log tail --\n" + "\n".join(daemon.log_lines[-12:])
            )
        return AssertionError("\n".join([message, *tails]))

    # -- waiting on conditions ----------------------------------------------

    def _progressed(self) -> None:
        self.progress.set()

    async def _wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Wait until ``condition()`` holds, re-checked at each writer's answer."""
        while not condition():
            self.progress.clear()
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise self.fail(f"budget spent waiting for {what} ({self.totals.as_dict()})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), remaining)

    async def _until_answered(self, call: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """Run ``call()`` until it is answered: (whether an earlier try's outcome was
        unknown, its result); the result is None when the budget ended first.
        Typed errors (a refusal) propagate."""
        unknown = False
        tries = 0
        while True:
            stretch, healthy = self.stretch, self.healthy
            self.in_flight += 1
            try:
                return unknown, await call()
            except (UnavailableError, DeadlineExceededError) as error:
                if healthy and stretch == self.stretch:
                    self.failed_while_up.append(repr(error))
                if not unknown:
                    self.totals.unknown_outcomes += 1
                unknown = True
                self.unavailable += 1
                self._progressed()
            finally:
                self.in_flight -= 1
            tries += 1
            if time.monotonic() >= self.deadline:
                self.totals.unanswered += 1
                return unknown, None
            await asyncio.sleep(BACKOFF.delay(tries))

    def _acknowledged(self, after_unknown: bool) -> None:
        self.acks += 1
        if after_unknown:
            self.totals.answered_after_unknown += 1
        self._progressed()

    # -- writing -------------------------------------------------------------

    def _envelopes(
        self, rng: random.Random, model: ThreadModel, count: int
    ) -> list[AgentEventEnvelope]:
        return [
            AgentEventEnvelope.new(
                {
                    "type": "text_delta",
                    "delta": f"{model.thread_id}/{len(model.attempts)}/{index}",
                    "pad": "x" * rng.choice([0, 16, 200, 1500]),
                },
                sequence=index,
            )
            for index in range(count)
        ]

    async def _append(self, client: TurnstoreClient, rng: random.Random, single: bool) -> None:
        model = rng.choice(self.threads)
        count = 1 if single else rng.choice([2, 3, 5, 8])
        attempt = AppendAttempt(model.open_turn, self._envelopes(rng, model, count))
        model.attempts.append(attempt)
        events = client.events
        if single:
            envelope = attempt.envelopes[0]

            async def call() -> list[int]:
                return [await events.append(model.thread_id, attempt.turn, envelope)]
        else:

            async def call() -> list[int]:
                return await events.append_many(model.thread_id, attempt.turn, attempt.envelopes)

        try:
            unknown, positions = await self._until_answered(call)
        except TurnFinishedError:
            # Also after an unknown try: a retry of a committed append finds
            # its events (idempotent), so a refusal means none is stored.
            attempt.outcome = REJECTED
            self.totals.rejected_appends += 1
            self._progressed()
            return
        if positions is None:
            attempt.outcome = UNKNOWN
            return
        first = positions[0]
        if positions != list(range(first, first + count)):
            raise self.fail(f"append of {count} got positions {positions}")
        attempt.outcome, attempt.positions = ACKED, positions
        self.totals.acked_appends += 1
        self.totals.acked_events += count
        self._acknowledged(unknown)

    async def _finish(self, client: TurnstoreClient, rng: random.Random) -> None:
        model = rng.choice(self.threads)
        # Appends from now on go to the next turn; those in flight may be refused.
        turn = model.open_turn
        model.open_turn += 1
        model.finish_tried.add(turn)
        tried_before = False

        async def call() -> bool:
            nonlocal tried_before
            first, tried_before = not tried_before, True
            try:
                await client.events.finish_turn(model.thread_id, turn)
            except TurnAlreadyFinishedError:
                if first:  # nobody else finishes this turn
                    raise
                return True  # an earlier try, whose answer was lost, committed
            return True

        try:
            unknown, done = await self._until_answered(call)
        except TurnAlreadyFinishedError as error:
            raise self.fail(
                f"{model.thread_id}: finish of turn {turn} refused: {error!r}"
            ) from None
        if done:
            model.finish_acked.add(turn)
            self.totals.acked_finishes += 1
            self._acknowledged(unknown)

    async def _save(self, client: TurnstoreClient, rng: random.Random) -> None:
        model = rng.choice(self.keys)
        async with model.lock:  # one save of a key at a time, each expecting the last
            self.tags += 1
            tag = f"{model.key}/{self.tags}"
            size = rng.choice([1, 3, 40])
            snapshot = ConversationSnapshot(
                [{"tag": tag}]
                + [{"n": n, "pad": "y" * rng.choice([10, 900])} for n in range(size)],
                [rng.random() < 0.5 for _ in range(size + 1)],
            )
            model.sent[tag] = snapshot
            history = client.history(model.key)
            expected: list[int] = []  # of each try

            async def call() -> int:
                expected.append(model.known)
                return await history.save_versioned(snapshot, expected_version=model.known)

            try:
                unknown, version = await self._until_answered(call)
            except VersionConflictError as conflict:
                # Only a try whose answer was lost can have moved the key:
                # this save's own earlier try, which must then be stored.
                if len(expected) > 1:
                    model.unknown.append(tag)
                await self._found_unknown_saves(client, model, conflict.current_version)
                if tag in model.unknown:
                    raise self.fail(f"{model.key}: {conflict!r}, {tag} not stored") from None
                self.totals.saves_found_after_unknown += 1
                self.totals.answered_after_unknown += 1
                self._progressed()
                return
            if version is None:
                model.unknown.append(tag)
                return
            if version != expected[-1] + 1 or version in model.versions:
                raise self.fail(
                    f"{model.key}: save expecting {expected[-1]} got version {version} "
                    f"(known: {sorted(model.versions)})"
                )
            model.known = version
            model.versions[version] = tag
            model.acked.append(version)
            self.totals.acked_saves += 1
            self._acknowledged(unknown)

    async def _found_unknown_saves(
        self, client: TurnstoreClient, model: VersionedKey, current: int | None
    ) -> None:
        """A conflict: the versions past ``model.known`` must be saves whose outcome was
        unknown, each stored whole; record which."""
        if current is None or current <= model.known:
            raise self.fail(f"{model.key}: conflict at {current}, but {model.known} is the latest")
        history = client.history(model.key)
        for version in range(model.known + 1, current + 1):
            _, loaded = await self._until_answered(partial(history.load_versioned, version))
            if loaded is None:
                raise self.fail(f"{model.key}: version {version} not loadable")
            self._match_unknown(model, version, loaded.snapshot)

    def _match_unknown(
        self, model: VersionedKey, version: int, snapshot: ConversationSnapshot
    ) -> None:
        head = snapshot.messages[0] if snapshot.messages else None
        tag = head.get("tag") if isinstance(head, dict) else None
        if tag not in model.unknown or snapshot != model.sent[tag]:
            raise self.fail(
                f"{model.key}: version {version} holds {tag!r}, no save whose outcome was "
                f"unknown ({model.unknown})"
            )
        model.unknown.remove(tag)
        model.versions[version] = tag
        model.known = version

    async def _writer(self, client: TurnstoreClient, rng: random.Random) -> None:
        while not self.stopping:
            action = rng.random()
            if action < 0.35:
                await self._append(client, rng, single=True)
            elif action < 0.7:
                await self._append(client, rng, single=False)
            elif action < 0.85:
                await self._finish(client, rng)
            else:
                await self._save(client, rng)

    # -- faults --------------------------------------------------------------

    async def _faults(self) -> None:
        for target in self.plan:
            await self._wait_for_acks(self.rng.randint(*ACKS_BETWEEN_FAULTS))
            self.totals.in_flight_at_fault += self.in_flight
            self.healthy = False
            self.stretch += 1
            if target is None:
                await asyncio.to_thread(self.postgres.stop, "immediate")
                self.totals.database_stops += 1
                # Start it again once writers have found it gone.
                await self._wait_for_refusals(1)
                await asyncio.to_thread(self.postgres.start)
            else:
                await asyncio.to_thread(self._kill_and_restart, target)
                # Up means reachable: a save with an expected version is sent
                # once, and would fail while its channel still backs off.
                for daemon, client in self.clients:
                    if daemon == target:
                        await client.wait_ready(CALL_TIMEOUT)
            self.healthy = True
            self.stretch += 1
        await self._wait_for_acks(ACKS_AFTER_LAST_FAULT)
        self.stopping = True

    async def _wait_for_refusals(self, more: int) -> None:
        goal = self.unavailable + more
        await self._wait_until(lambda: self.unavailable >= goal, f"{more} more refusals")

    async def _wait_for_acks(self, more: int) -> None:
        goal = self.acks + more
        await self._wait_until(lambda: self.acks >= goal, f"{more} more acknowledgements")

    def _kill_and_restart(self, target: int) -> None:
        daemon = self.daemons[target]
        status = daemon.kill()
        if status != -9:
            raise self.fail(f"daemon {target} exited with {status}, not by SIGKILL")
        self.totals.daemon_kills += 1
        try:
            daemon.start()
        except RuntimeError as error:
            raise self.fail(f"restart of daemon {target} failed: {error}") from error

    # -- checking ------------------------------------------------------------

    async def check(self) -> None:
        histories = []
        for daemon in self.daemons:
            async with TurnstoreClient(daemon.target, timeout=CALL_TIMEOUT) as client:
                for thread in self.threads:
                    await check_thread(client, thread, self.fail)
                histories.append([await self._check_turn_order(client, t) for t in self.threads])
                for key in self.keys:
                    await self._check_key(client, key)
        if histories[0] != histories[1]:
            raise self.fail("the two daemons read different histories")

    async def _check_turn_order(
        self, client: TurnstoreClient, model: ThreadModel
    ) -> list[tuple[int, int, str]]:
        """Reads in turn order from any offset agree with the events stored (they go
        by each turn's event count); returns (position, turn, id) of each event."""
        name = model.thread_id
        stored = [event async for event in client.events.read_events(name)]
        in_turns = [e.envelope for e in sorted(stored, key=lambda e: (e.turn, e.position))]
        count = len(in_turns)
        for offset in sorted({0, count // 3, count // 2, count - 1, count} - {-1}):
            if await client.events.get_events_since(name, offset) != in_turns[offset:]:
                raise self.fail(f"{name}: reading in turn order from {offset} of {count} differs")
        return [(e.position, e.turn, e.envelope.event_id) for e in stored]

    async def _check_key(self, client: TurnstoreClient, model: VersionedKey) -> None:
        history = client.history(model.key)
        if model.acked != sorted(set(model.acked)):
            raise self.fail(f"{model.key}: acknowledged versions not rising: {model.acked}")
        kept = [info.version for info in await history.list_versions()]
        latest = kept[0] if kept else 0
        if latest < model.known or kept != list(range(latest, 0, -1)):
            raise self.fail(f"{model.key}: versions {kept} kept, {model.known} known")
        for version in kept:
            loaded = await history.load_versioned(version)
            if loaded is None or loaded.version != version:
                raise self.fail(f"{model.key}: version {version} not loadable: {loaded!r}")
            if version > model.known:  # a save whose outcome stayed unknown
                self._match_unknown(model, version, loaded.snapshot)
            elif loaded.snapshot != model.sent[model.versions[version]]:
                raise self.fail(f"{model.key}: version {version} holds another snapshot")
        newest = await history.load_versioned()
        if model.acked and (newest is None or newest.version < model.acked[-1]):
            raise self.fail(f"{model.key}: latest {newest!r}, {model.acked[-1]} acknowledged")

    # -- the loop ------------------------------------------------------------

    async def run(self) -> dict[str, int]:
        for daemon in self.daemons:
            await asyncio.to_thread(daemon.start)
        try:
            modes: list[tuple[int, WriteMode]] = [
                (0, "stream"),
                (1, "stream"),
                (0, "unary"),
                (1, "unary"),
            ]
            self.clients = [
                (n, TurnstoreClient(self.daemons[n].target, timeout=CALL_TIMEOUT, write_mode=mode))
                for n, mode in modes
            ]
            clients = [client for _, client in self.clients]
            try:
                writers = [
                    self._writer(clients[n % len(clients)], random.Random(self.rng.getrandbits(64)))
                    for n in range(WRITERS)
                ]
                # A failure anywhere cancels everything else at once.
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._faults())
                    for writer in writers:
                        group.create_task(writer)
            except ExceptionGroup as failed:
                raise failed.exceptions[0] from None
            finally:
                for client in clients:
                    await client.aclose()
            await self.check()
        finally:
            for n, daemon in enumerate(self.daemons):
                if daemon.process is not None and daemon.process.poll() is None:
                    status = await asyncio.to_thread(daemon.stop)
                    if status != 0:
                        raise self.fail(f"daemon {n} stopped with status {status}")
        if any(PASSWORD in line for daemon in self.daemons for line in daemon.log_lines):
            raise self.fail("the DSN's password is in a daemon's log")
        if self.failed_while_up:
            raise self.fail(f"calls failed while everything was up: {self.failed_while_up[:5]}")
        if self.totals.unanswered:
            raise self.fail(f"{self.totals.unanswered} calls unanswered within the budget")
        return self.totals.as_dict()


def run_postgres_crash_loop(
    postgres: PostgresServer, root: Path, faults: int, seed: int
) -> dict[str, int]:
    """Run ``faults`` faults (SIGKILL daemon 0, daemon 1, stop the database, in
    turn) under concurrent writes on ``postgres``, then check everything.

    ``postgres`` is stopped and started again: give it a cluster of its own.
    Returns the counts (``daemon_kills``, ``database_stops``, ``acked_events``, ...).
    """
    return asyncio.run(PostgresCrashLoop(postgres, root, faults, seed).run())


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    """A cluster of this module's own: the faults never reach the shared one."""
    server = start_postgres()
    yield server
    server.remove()


def test_acknowledged_writes_survive_daemon_kills_and_database_stops(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    counts = run_postgres_crash_loop(own_postgres, tmp_path, faults=6, seed=20261202)
    print(counts)  # shown with -s, and on failure
    assert counts["daemon_kills"] == 4
    assert counts["database_stops"] == 2
    assert counts["acked_appends"] > 0
    assert counts["acked_finishes"] > 0
    assert counts["acked_saves"] > 0
    # The faults landed on calls waiting for their answer, whose tries were
    # then sent again and answered.
    assert counts["in_flight_at_fault"] > 0
    assert counts["unknown_outcomes"] > 0
    assert counts["answered_after_unknown"] > 0
