"""In-memory implementations of both store contracts, for tests.

They follow ``docs/contract.md`` exactly and raise the same exception
classes as the gRPC stores, so a test suite can run against either. They
keep everything in process memory and are safe for use from one event loop.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from turnstore._validate import check_offset, check_thread_id, check_turn
from turnstore.errors import (
    EventIdConflictError,
    TurnAlreadyFinishedError,
    TurnFinishedError,
)
from turnstore.models import AgentEventEnvelope, ConversationSnapshot, StoredTurnEvents

__all__ = ["InMemoryEventStore", "InMemoryHistoryStore"]


@dataclass
class _Turn:
    events: list[AgentEventEnvelope] = field(default_factory=list)
    finished: bool = False


@dataclass
class _Thread:
    turns: dict[int, _Turn] = field(default_factory=dict)
    next_position: int = 0
    # event_id -> (position, turn): appends are idempotent by event id.
    event_ids: dict[str, tuple[int, int]] = field(default_factory=dict)


class InMemoryEventStore:
    """An :class:`~turnstore.protocols.EventStore` in a dict.

    Like the daemon, appends are idempotent by event id: appending an
    envelope whose ``event_id`` is already in the same turn returns its
    original position (even after the turn was finished) and stores nothing;
    an ``event_id`` already in another turn raises EventIdConflictError.
    Returned turns and envelopes are copies: mutating them does not change
    the store.
    """

    def __init__(self) -> None:
        self._threads: dict[str, _Thread] = {}

    async def append(self, thread_id: str, turn: int, envelope: AgentEventEnvelope) -> int:
        """Store ``envelope`` at the end of ``turn``; return its position."""
        check_thread_id(thread_id)
        check_turn(turn)
        thread = self._threads.setdefault(thread_id, _Thread())
        known = thread.event_ids.get(envelope.event_id)
        if known is not None:
            position, known_turn = known
            if known_turn != turn:
                raise EventIdConflictError(
                    f"event_id {envelope.event_id!r} is already stored in turn "
                    f"{known_turn} at position {position}"
                )
            return position
        stored = thread.turns.get(turn)
        if stored is not None and stored.finished:
            raise TurnFinishedError(f"cannot append to finished turn {turn}")
        thread.turns.setdefault(turn, _Turn()).events.append(copy.deepcopy(envelope))
        thread.event_ids[envelope.event_id] = (thread.next_position, turn)
        thread.next_position += 1
        return thread.next_position - 1

    async def finish_turn(self, thread_id: str, turn: int) -> None:
        """Close ``turn``, creating it empty when it does not exist."""
        check_thread_id(thread_id)
        check_turn(turn)
        stored = self._threads.setdefault(thread_id, _Thread()).turns.setdefault(turn, _Turn())
        if stored.finished:
            raise TurnAlreadyFinishedError(f"turn {turn} is already finished")
        stored.finished = True

    async def get_turn(self, thread_id: str, turn: int) -> StoredTurnEvents | None:
        """The turn, or None for an unknown thread or turn."""
        check_thread_id(thread_id)
        check_turn(turn)
        thread = self._threads.get(thread_id)
        stored = thread.turns.get(turn) if thread else None
        if stored is None:
            return None
        return StoredTurnEvents(turn, copy.deepcopy(stored.events), stored.finished)

    async def get_turns(self, thread_id: str) -> list[StoredTurnEvents]:
        """Every turn in ascending turn order; empty for an unknown thread."""
        check_thread_id(thread_id)
        thread = self._threads.get(thread_id)
        if thread is None:
            return []
        return [
            StoredTurnEvents(turn, copy.deepcopy(stored.events), stored.finished)
            for turn, stored in sorted(thread.turns.items())
        ]

    async def clear(self, thread_id: str) -> None:
        """Forget the thread; a no-op for an unknown one."""
        check_thread_id(thread_id)
        self._threads.pop(thread_id, None)

    async def get_events(self, thread_id: str) -> list[AgentEventEnvelope]:
        """All envelopes, turn by turn, each turn in append order."""
        return [event for turn in await self.get_turns(thread_id) for event in turn.events]

    async def event_count(self, thread_id: str) -> int:
        """The number of envelopes in the thread."""
        check_thread_id(thread_id)
        thread = self._threads.get(thread_id)
        return thread.next_position if thread else 0

    async def get_events_since(self, thread_id: str, offset: int) -> list[AgentEventEnvelope]:
        """The envelopes of :meth:`get_events` after its first ``offset``."""
        check_offset(offset)
        return (await self.get_events(thread_id))[offset:]


class InMemoryHistoryStore:
    """A :class:`~turnstore.protocols.HistoryStore` for one conversation."""

    def __init__(self) -> None:
        self._snapshot: ConversationSnapshot | None = None

    async def save(self, snapshot: ConversationSnapshot) -> None:
        """Replace the stored snapshot with a copy of ``snapshot``."""
        self._snapshot = copy.deepcopy(snapshot)

    async def load(self) -> ConversationSnapshot | None:
        """A copy of the latest snapshot, or None before the first save."""
        return copy.deepcopy(self._snapshot)
