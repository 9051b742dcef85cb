"""The replay loop shared by gRPC ``Replay`` and the HTTP event stream.

:func:`replay` catches a reader up from storage and, when it follows, goes on
as commits wake it; it yields :class:`ReplayBatch` values, each what one
message of either transport carries. Both transports therefore give the same
guarantees: every event after the cursor exactly once, in commit order, finish
markers placed among the events, ``caught_up`` once, and a ``cleared`` batch
(then the end) when the thread is no longer the one of the expected epoch.

Blocking reads run through ``run`` (the daemon's read pool), never on the
event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from turnstore.server.replay.errors import FollowerTooSlowError
from turnstore.server.replay.followers import Followers, SendBudget, Sender
from turnstore.server.replay.parts import StepPart, split_step
from turnstore.server.storage import records
from turnstore.server.storage.errors import (
    DatabaseUnavailableError,
    EngineClosedError,
    InvalidArgumentError,
)
from turnstore.server.storage.interface import StorageEngine
from turnstore.server.storage.values import ReplayStep
from turnstore.v1 import turnstore_pb2 as pb

# Events per batch unless the reader asks for another number, and the most.
EVENTS_PER_BATCH: Final = 512
MAX_EVENTS_PER_BATCH: Final = 4096
# Event bytes per batch: a batch stops growing past this, so even a thread of
# maximal events streams within the gRPC message limit.
BYTES_PER_BATCH: Final = 4 * 1024 * 1024
MAX_POSITION: Final = (1 << 63) - 1
MAX_TURN: Final = (1 << 64) - 1
MAX_EVENT_TYPE_FILTERS: Final = 64

Run = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class ReplayQuery:
    """What a reader asks for.

    ``start_position`` is the first position wanted (one past the reader's
    cursor). ``epoch`` is the thread epoch the cursor belongs to (None: any,
    the reader has seen none); a different one in storage means the thread
    was cleared, or the database restored from a backup (a restored backup
    gets new epochs). A ``start_position`` past the thread's end (of that
    epoch, or of the thread as it is when ``epoch`` is None) is refused with
    CursorOutOfRangeError at the first step: no such cursor was handed out.
    ``finish_seq`` resumes exactly after a finish marker the reader saw
    (None: from the first finish at or after ``start_position``, so finishes
    right after the cursor may come again). Turn and type filters drop
    events and markers but never move the cursor.
    """

    thread_id: str
    start_position: int = 0
    epoch: int | None = None
    finish_seq: int | None = None
    follow: bool = False
    from_turn: int = 0
    to_turn: int = MAX_TURN
    event_types: frozenset[str] = frozenset()
    until_turn_finished: int | None = None
    max_events: int = EVENTS_PER_BATCH
    max_bytes: int = BYTES_PER_BATCH

    def check(self) -> None:
        """Raise InvalidArgumentError, naming the field, for a query out of range."""
        if self.from_turn > self.to_turn:
            raise InvalidArgumentError(
                "from_turn", f"{self.from_turn} is after to_turn {self.to_turn}"
            )
        if len(self.event_types) > MAX_EVENT_TYPE_FILTERS:
            raise InvalidArgumentError(
                "event_types",
                f"holds {len(self.event_types)}, over the limit of {MAX_EVENT_TYPE_FILTERS}",
            )
        if not 0 <= self.start_position <= MAX_POSITION + 1:
            raise InvalidArgumentError("after_position", f"must be at most {MAX_POSITION}")

    @property
    def filtered(self) -> bool:
        """Whether events must be decoded to apply a filter."""
        return bool(self.event_types) or self.from_turn != 0 or self.to_turn != MAX_TURN


@dataclass(frozen=True)
class FinishMarker:
    """A turn's finish as delivered: ``resume_finish_seq`` resumes right after it."""

    turn: int
    event_count: int
    last_position: int | None
    # The position after which this finish sits (its frontier - 1; -1: none).
    after_position: int
    resume_finish_seq: int


def _ignore_size(size: int) -> None:
    """The ``hold`` of a batch outside any budget."""


@dataclass
class ReplayBatch:
    """One message's worth of a replay.

    ``events`` are stored records (``events`` entries in wire form) kept by
    the filters, in commit order; ``finishes`` follow them. ``next_position``
    and ``next_finish_seq`` are the exact cursor after the batch, of thread
    number ``epoch`` (None: the thread does not exist yet). ``cleared``
    batches carry nothing else and are ``final``; a ``final`` batch is the
    last one of the replay.
    """

    events: list[bytes]
    finishes: list[FinishMarker] = field(default_factory=list)
    caught_up: bool = False
    next_position: int = 0
    next_finish_seq: int | None = None
    epoch: int | None = None
    cleared: bool = False
    final: bool = False
    # Tells the follower budget the size of the message sent for this batch.
    hold: Callable[[int], None] = _ignore_size


def _kept(values: list[bytes], query: ReplayQuery) -> list[bytes]:
    """The stored values within the turn range and of the wanted types."""
    kept = []
    for value in values:
        event = pb.StoredEvent.FromString(records.unframe(value))
        if query.from_turn <= event.turn <= query.to_turn and (
            not query.event_types or event.envelope.type in query.event_types
        ):
            kept.append(value)
    return kept


async def replay(
    engine: StorageEngine,
    run: Run,
    followers: Followers,
    query: ReplayQuery,
    end: Callable[[Sender], None],
) -> AsyncGenerator[ReplayBatch, None]:
    """Batches of ``query``'s replay until it ends.

    Raises CursorOutOfRangeError (before any batch) for a cursor past the
    end of the thread, checked by the engine in the first step's read.

    A follower that has caught up stays open while the database is
    unreachable (DatabaseUnavailableError) and re-reads from its cursor on
    its next wake; any other reader gets the error.

    It ends after the ``until_turn_finished`` turn's finish marker, or when
    that turn is found finished at the end of what is stored, after catching
    up when not following, and after a ``cleared`` batch. A follower raises
    EngineClosedError when the daemon shuts down. Batches with nothing to say
    (no kept event, no marker) are not yielded.

    Each step first reserves one follower budget (``followers.send_budget``)
    and reads at most that many bytes; a step that passes finishes is sent as
    several batches (:func:`.parts.split_step`), each holding, while it is
    sent, its message and the step's batches still to come. The transport encodes a yielded batch,
    drops ``batch.events``, calls ``batch.hold(size)`` with its message's
    size and sends it; asking for the next batch releases the bytes. When
    the daemon-wide budget needs them, ``end(sender)`` ends this replay's
    transport stream; if the transport had still taken that message, the
    next batch raises FollowerTooSlowError instead.
    """
    query.check()
    until = query.until_turn_finished
    position = query.start_position
    epoch = query.epoch
    finish_seq = query.finish_seq
    caught_up = False
    budget = followers.send_budget
    with (
        followers.replay(query.thread_id, query.follow) as wake,
        budget.sending(end) as sender,
    ):
        while True:
            if wake is not None:
                wake.clear()
            await budget.reserve(sender)
            try:
                step: ReplayStep = await run(
                    engine.replay_step,
                    query.thread_id,
                    epoch,
                    position,
                    finish_seq,
                    query.max_events,
                    until,
                    min(query.max_bytes, budget.limits.message_bytes),
                )
            except DatabaseUnavailableError:
                if wake is None or not caught_up:
                    raise  # a reader not yet caught up learns it, and may retry
                # A caught-up follower outlives the outage: nothing was read, so
                # the next wake (the listener wakes all once it reconnects)
                # re-reads from the same cursor.
                budget.release(sender)
                await _wait_for_wake(followers, wake)
                continue
            if step.cleared:
                budget.release(sender)
                yield ReplayBatch(
                    [],
                    next_position=position,
                    next_finish_seq=finish_seq,
                    epoch=epoch,
                    cleared=True,
                    final=True,
                )
                return
            epoch = step.epoch
            at_end, watched_finished = step.at_end, step.watched_turn_finished
            parts = split_step(step, position)
            # While the transport sends a batch, keep no other copy of its events.
            del step
            done = final = False
            while parts and not done:
                part = parts.pop(0)
                position, finish_seq = part.next_position, part.next_finish_seq
                last = not parts
                batch = ReplayBatch(
                    _kept(part.events, query) if query.filtered else part.events,
                    next_position=position,
                    next_finish_seq=finish_seq,
                    epoch=epoch,
                    # The step's later parts stay in memory while this one is sent.
                    hold=functools.partial(_hold_with, budget, sender, _size(parts)),
                )
                part.events = []
                for seq, finish in part.finishes:
                    if query.from_turn <= finish.turn <= query.to_turn:
                        batch.finishes.append(
                            FinishMarker(
                                finish.turn,
                                finish.event_count,
                                finish.last_position,
                                finish.frontier - 1,
                                seq + 1,
                            )
                        )
                    done = done or finish.turn == until
                if last and at_end and not caught_up:
                    batch.caught_up = caught_up = True
                batch.final = done or (last and at_end and (wake is None or watched_finished))
                final = batch.final
                if batch.events or batch.finishes or batch.caught_up:
                    yield batch
                    del batch
                    if sender.was_ended:
                        budget.release(sender)
                        raise FollowerTooSlowError(
                            "the follower did not read fast enough for the daemon's follower "
                            "budget; resume after the last position received"
                        )
            budget.release(sender)
            if final:
                return
            if at_end:
                assert wake is not None
                await _wait_for_wake(followers, wake)


def _size(parts: list[StepPart]) -> int:
    """The bytes of the events of ``parts``."""
    return sum(len(event) for part in parts for event in part.events)


def _hold_with(budget: SendBudget, sender: Sender, rest: int, size: int) -> None:
    """``sender`` hands a message of ``size`` bytes to gRPC while keeping ``rest`` more."""
    budget.hold(sender, size + rest)


async def _wait_for_wake(followers: Followers, wake: asyncio.Event) -> None:
    """Wait for the follower's next wake; EngineClosedError once the daemon is closing."""
    if followers.closing:
        raise EngineClosedError("the daemon is shutting down")
    await followers.wait(wake)
    if followers.closing:
        raise EngineClosedError("the daemon is shutting down")
