"""Crash safety: SIGKILL the daemon while writes are in flight, restart, verify.

:func:`run_crash_loop` drives appends, finishes and snapshot saves
concurrently through the real client and records every write the daemon
acknowledged. After a random number of acknowledgements (a count, never a
time) it SIGKILLs the daemon while the other writers still wait for their
answers, restarts it on the same data directory and checks the whole history
written so far. In every other round the client runs without retries, so a
call cut off by the kill fails at once; in the others the daemon is back
while the client still retries those calls (appends are idempotent by event
id, a retried finish that finds its turn finished succeeds), so the retries
land on the restarted daemon. Either way:

- every acknowledged append is stored, unchanged, at exactly the positions
  and in the turn it was acknowledged with; positions are gap-free from 0 and
  ``event_count`` agrees with what ``ReadEvents`` returns;
- every append refused with ``TurnFinishedError`` is absent;
- an append cut off by the kill is either absent or stored whole, in order,
  at consecutive positions; no event appears that was never sent;
- every acknowledged finish is recorded; a turn nobody tried to finish is not
  finished; ``ListTurns`` agrees with ``ReadEvents``;
- every key's snapshot parses (no torn write), has a version at least that
  of the latest acknowledged save and, for an acknowledged version, exactly
  its content; versions are never given twice.

``tests/support/soak.py`` (``make soak``) runs the same loop with many more kills.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import grpc

from tests.support.daemon import Daemon
from turnstore import (
    AgentEventEnvelope,
    ConversationSnapshot,
    RetryPolicy,
    StoredEvent,
    TurnFinishedError,
    TurnstoreClient,
    TurnstoreError,
)
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

THREADS: Final = 4
KEYS: Final = 3
WRITERS: Final = 8
# Acknowledged writes per round before the kill, drawn uniformly.
ACKS_BEFORE_KILL: Final = (3, 60)
# A generous deadline, so a wedged daemon fails the run instead of hanging it.
CALL_TIMEOUT: Final = 30.0

ACKED: Final = "acked"
REJECTED: Final = "rejected"
UNKNOWN: Final = "unknown"
PENDING: Final = "pending"


@dataclass
class AppendAttempt:
    """One append call: what it sent and what became of it."""

    turn: int
    envelopes: list[AgentEventEnvelope]
    outcome: str = PENDING
    positions: list[int] = field(default_factory=list)


@dataclass
class ThreadModel:
    """What the writers did to one thread, across every round."""

    thread_id: str
    open_turn: int = 1
    attempts: list[AppendAttempt] = field(default_factory=list)
    finish_acked: set[int] = field(default_factory=set)
    finish_tried: set[int] = field(default_factory=set)


@dataclass
class KeyModel:
    """What the writers saved under one conversation key, across every round."""

    key: str
    # Every snapshot sent, by the unique tag in its first message.
    sent: dict[str, ConversationSnapshot] = field(default_factory=dict)
    # Acknowledged version -> the tag of the snapshot it was given to.
    acked: dict[int, str] = field(default_factory=dict)
    # The version found at the last check; later saves must get more.
    floor: int = 0


@dataclass
class Round:
    """The state the writers of one round share."""

    client: TurnstoreClient
    kill_after: int
    # Restart at once, while the writers' retries are still going on.
    restart_at_kill: bool
    acked: int = 0
    in_flight: int = 0
    killed: bool = False
    in_flight_at_kill: int = 0


@dataclass
class Totals:
    kills: int = 0
    acked_appends: int = 0
    acked_events: int = 0
    acked_finishes: int = 0
    acked_saves: int = 0
    rejected_appends: int = 0
    # Writes acknowledged by the restarted daemon, on a retry.
    acked_across_restart: int = 0
    unacked: int = 0
    in_flight_at_kill: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


async def check_thread(
    client: TurnstoreClient, model: ThreadModel, fail: Callable[[str], AssertionError]
) -> None:
    """Check one thread's stored history against what its writers did.

    Raises ``fail(message)`` for the first inconsistency: see the module
    docstring for the rules (acknowledged appends at their positions,
    refused ones absent, cut-off ones whole or absent, no id twice, finishes).
    """
    name = model.thread_id
    stored: list[StoredEvent] = [e async for e in client.events.read_events(name, 0)]
    count = await client.events.event_count(name)
    if count != len(stored):
        raise fail(f"{name}: event_count {count} but ReadEvents gave {len(stored)}")
    positions = [event.position for event in stored]
    if positions != list(range(count)):
        raise fail(f"{name}: positions are not 0..{count - 1}: {positions}")
    by_id = {event.envelope.event_id: event for event in stored}
    if len(by_id) != len(stored):
        raise fail(f"{name}: an event id is stored twice")
    sent_ids: set[str] = set()
    for attempt in model.attempts:
        ids = [envelope.event_id for envelope in attempt.envelopes]
        sent_ids.update(ids)
        found = [by_id.get(event_id) for event_id in ids]
        present = [event for event in found if event is not None]
        if attempt.outcome == REJECTED and present:
            raise fail(f"{name}: refused append is stored: {present}")
        if attempt.outcome == ACKED and len(present) != len(ids):
            raise fail(f"{name}: acknowledged append at {attempt.positions} lost")
        if not present:
            continue
        if len(present) != len(ids):
            raise fail(f"{name}: append stored in part: {len(present)} of {len(ids)}")
        got = [event.position for event in present]
        if got != list(range(got[0], got[0] + len(got))):
            raise fail(f"{name}: one append stored at scattered positions {got}")
        if attempt.outcome == ACKED and got != attempt.positions:
            raise fail(f"{name}: acknowledged at {attempt.positions}, stored at {got}")
        for event, envelope in zip(present, attempt.envelopes, strict=True):
            if event.turn != attempt.turn or event.envelope != envelope:
                raise fail(
                    f"{name}: position {event.position} holds {event!r} in turn "
                    f"{event.turn}, not {envelope!r} in turn {attempt.turn}"
                )
    if not set(by_id) <= sent_ids:
        raise fail(f"{name}: events never sent are stored: {set(by_id) - sent_ids}")
    # ListTurns agrees with ReadEvents, and the finish flags with the acknowledgements.
    turns = await client.events.get_turns(name)
    numbers = [turn.turn for turn in turns]
    if numbers != sorted(set(numbers)):
        raise fail(f"{name}: ListTurns turn numbers not ascending: {numbers}")
    with_events = {event.turn for event in stored}
    if not with_events | model.finish_acked <= set(numbers) <= with_events | model.finish_tried:
        raise fail(f"{name}: ListTurns gave turns {numbers}")
    for turn in turns:
        expected = [event.envelope for event in stored if event.turn == turn.turn]
        if turn.events != expected:
            raise fail(f"{name}: turn {turn.turn} differs between ListTurns and ReadEvents")
        if turn.turn in model.finish_acked and not turn.finished:
            raise fail(f"{name}: acknowledged finish of turn {turn.turn} lost")
        if turn.finished and turn.turn not in model.finish_tried:
            raise fail(f"{name}: turn {turn.turn} finished by nobody")
    for number in model.finish_acked:
        one = await client.events.get_turn(name, number)
        if one is None or not one.finished:
            raise fail(f"{name}: GetTurn {number} is {one!r} after an acknowledged finish")


class CrashLoop:
    """The models of every thread and key, and the writers that fill them."""

    def __init__(self, data_dir: Path, seed: int, daemon: Daemon | None = None) -> None:
        self.rng = random.Random(seed)
        # tests/test_power_cut.py's kills are power cuts.
        self.daemon = daemon if daemon is not None else Daemon(data_dir)
        self.threads = [ThreadModel(f"crash-thread-{n}") for n in range(THREADS)]
        self.keys = [KeyModel(f"crash-key-{n}") for n in range(KEYS)]
        self.totals = Totals()
        self.tags = 0

    def fail(self, message: str) -> AssertionError:
        process = self.daemon.process
        status = None if process is None else process.poll()
        state = "running" if status is None else f"exited with status {status}"
        tail = "\n".join(self.daemon.log_lines[-20:])
        return AssertionError(f"{message}\n-- daemon {state}; log tail --\n{tail}")

    # -- writing -----------------------------------------------------------

    def _acknowledged(self, state: Round) -> None:
        if state.killed:
            self.totals.acked_across_restart += 1
        state.acked += 1
        if state.acked >= state.kill_after and not state.killed:
            # Other writers are waiting on their calls right now: kill under them.
            state.killed = True
            state.in_flight_at_kill = state.in_flight
            self.daemon.kill()
            if state.restart_at_kill:
                self.restart()

    def _unanswered(self, state: Round, error: TurnstoreError) -> None:
        """A write failed without a verdict; only the kill may cause that."""
        if not state.killed:
            raise self.fail(f"a write failed while the daemon was up: {error!r}")
        self.totals.unacked += 1

    def _envelopes(self, rng: random.Random, model: ThreadModel) -> list[AgentEventEnvelope]:
        count = rng.choice([1, 1, 2, 3, 5, 8])
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

    async def _append(self, state: Round, rng: random.Random) -> None:
        model = rng.choice(self.threads)
        attempt = AppendAttempt(model.open_turn, self._envelopes(rng, model))
        model.attempts.append(attempt)
        state.in_flight += 1
        try:
            if len(attempt.envelopes) == 1 and rng.random() < 0.5:
                positions = [
                    await state.client.events.append(
                        model.thread_id, attempt.turn, attempt.envelopes[0]
                    )
                ]
            else:
                positions = await state.client.events.append_many(
                    model.thread_id, attempt.turn, attempt.envelopes
                )
        except TurnFinishedError:
            attempt.outcome = REJECTED
            self.totals.rejected_appends += 1
            return
        except TurnstoreError as error:
            attempt.outcome = UNKNOWN
            self._unanswered(state, error)
            return
        finally:
            state.in_flight -= 1
        first = positions[0] if positions else 0
        if positions != list(range(first, first + len(attempt.envelopes))):
            raise self.fail(f"append of {len(attempt.envelopes)} got positions {positions}")
        attempt.outcome, attempt.positions = ACKED, positions
        self.totals.acked_appends += 1
        self.totals.acked_events += len(positions)
        self._acknowledged(state)

    async def _finish(self, state: Round, rng: random.Random) -> None:
        model = rng.choice(self.threads)
        # Appends from now on go to the next turn; those in flight may be refused.
        turn = model.open_turn
        model.open_turn += 1
        model.finish_tried.add(turn)
        state.in_flight += 1
        try:
            await state.client.events.finish_turn(model.thread_id, turn)
        except TurnstoreError as error:
            self._unanswered(state, error)
            return
        finally:
            state.in_flight -= 1
        model.finish_acked.add(turn)
        self.totals.acked_finishes += 1
        self._acknowledged(state)

    async def _save(self, state: Round, rng: random.Random) -> None:
        model = rng.choice(self.keys)
        self.tags += 1
        tag = f"{model.key}/{self.tags}"
        size = rng.choice([1, 3, 40])
        snapshot = ConversationSnapshot(
            [{"tag": tag}] + [{"n": n, "pad": "y" * rng.choice([10, 900])} for n in range(size)],
            [rng.random() < 0.5 for _ in range(size + 1)],
        )
        model.sent[tag] = snapshot
        state.in_flight += 1
        try:
            version = await state.client.history(model.key).save_versioned(snapshot)
        except TurnstoreError as error:
            self._unanswered(state, error)
            return
        finally:
            state.in_flight -= 1
        if version in model.acked or version <= model.floor:
            raise self.fail(
                f"save to {model.key!r} got version {version}, already given "
                f"(acknowledged: {sorted(model.acked)}, found at restart: {model.floor})"
            )
        model.acked[version] = tag
        self.totals.acked_saves += 1
        self._acknowledged(state)

    async def _writer(self, state: Round, rng: random.Random) -> None:
        while not state.killed:
            action = rng.random()
            if action < 0.65:
                await self._append(state, rng)
            elif action < 0.8:
                await self._finish(state, rng)
            else:
                await self._save(state, rng)

    async def write_until_killed(self, restart_at_kill: bool) -> None:
        """Write until the kill; with ``restart_at_kill`` the client retries across it."""
        kill_after = self.rng.randint(*ACKS_BEFORE_KILL)
        retry = None if restart_at_kill else RetryPolicy(attempts=1)
        async with TurnstoreClient(self.daemon.target, timeout=CALL_TIMEOUT, retry=retry) as client:
            state = Round(client, kill_after, restart_at_kill)
            writers = [random.Random(self.rng.getrandbits(64)) for _ in range(WRITERS)]
            await asyncio.gather(*(self._writer(state, rng) for rng in writers))
        assert state.killed
        self.totals.kills += 1
        self.totals.in_flight_at_kill += state.in_flight_at_kill

    # -- checking ----------------------------------------------------------

    async def check(self) -> None:
        async with TurnstoreClient(self.daemon.target, timeout=CALL_TIMEOUT) as client:
            for thread in self.threads:
                await check_thread(client, thread, self.fail)
            async with grpc.aio.insecure_channel(self.daemon.target) as channel:
                stub = pb_grpc.HistoryStoreServiceStub(channel)
                for key in self.keys:
                    await self._check_key(stub, key)

    async def _check_key(self, stub: pb_grpc.HistoryStoreServiceStub, model: KeyModel) -> None:
        response = await stub.Load(pb.LoadRequest(key=model.key), timeout=CALL_TIMEOUT)
        if not response.found:
            if model.acked:
                raise self.fail(f"{model.key}: acknowledged saves {sorted(model.acked)} lost")
            return
        snapshot = response.snapshot
        latest = max(model.acked, default=0)
        if snapshot.version < max(latest, model.floor, 1):
            raise self.fail(
                f"{model.key}: version {snapshot.version} found, but {latest} was acknowledged "
                f"and {model.floor} found before"
            )
        if snapshot.content_type != "application/json":
            raise self.fail(f"{model.key}: content type {snapshot.content_type!r}")
        loaded = ConversationSnapshot.from_json(snapshot.data)  # raises if torn
        head = loaded.messages[0] if loaded.messages else None
        tag = head.get("tag") if isinstance(head, dict) else None
        if tag not in model.sent or loaded != model.sent[tag]:
            raise self.fail(f"{model.key}: version {snapshot.version} holds no snapshot sent")
        if snapshot.version in model.acked and model.acked[snapshot.version] != tag:
            raise self.fail(
                f"{model.key}: version {snapshot.version} holds {tag!r}, but was "
                f"acknowledged for {model.acked[snapshot.version]!r}"
            )
        model.floor = snapshot.version

    # -- the loop ----------------------------------------------------------

    def restart(self) -> None:
        """Start the daemon again on the data directory the kill left behind."""
        assert self.daemon.process is not None
        if self.daemon.process.returncode != -9:
            raise self.fail(f"daemon exited with {self.daemon.process.returncode}, not by SIGKILL")
        try:
            self.daemon.start()
        except RuntimeError as error:
            assert self.daemon.process is not None
            raise self.fail(
                f"restart after kill {self.totals.kills} failed, exit status "
                f"{self.daemon.process.returncode}, data dir {self.daemon.data_dir}: {error}"
            ) from error

    async def run(self, kills: int) -> dict[str, int]:
        self.daemon.start()
        try:
            for round_number in range(kills):
                # Every other round the daemon comes back while the writers'
                # calls are still being retried (appends are idempotent by
                # event id); in the others each call cut off fails at once.
                retrying = round_number % 2 == 1
                await self.write_until_killed(restart_at_kill=retrying)
                if not retrying:
                    self.restart()
                await self.check()
        finally:
            assert self.daemon.process is not None
            if self.daemon.process.poll() is None:
                status = self.daemon.stop()
                if status != 0:
                    raise self.fail(f"daemon stopped with status {status}")
        return self.totals.as_dict()


def run_crash_loop(tmp_dir: Path, kills: int, seed: int) -> dict[str, int]:
    """Kill the daemon ``kills`` times under concurrent writes, checking after each.

    Returns the counts of what was done: ``kills``, ``acked_appends``,
    ``acked_finishes``, ``acked_saves``, and more (``unacked`` writes cut off
    by a kill, ``rejected_appends``, ``in_flight_at_kill``, ...).
    """
    return asyncio.run(CrashLoop(Path(tmp_dir) / "data", seed).run(kills))


def test_acknowledged_writes_survive_repeated_sigkills(tmp_path: Path) -> None:
    counts = run_crash_loop(tmp_path, kills=8, seed=20261121)
    assert counts["kills"] == 8
    assert counts["acked_appends"] > 0
    assert counts["acked_finishes"] > 0
    assert counts["acked_saves"] > 0
    # The kills really did land on writes waiting for their answer.
    assert counts["in_flight_at_kill"] > 0
    assert counts["unacked"] > 0
    # ...and, in the rounds with retries, calls cut off were retried to success.
    assert counts["acked_across_restart"] > 0
