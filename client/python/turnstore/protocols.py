"""The two store contracts as ``typing.Protocol``\\ s.

Method names and meanings follow the Rust traits (``docs/contract.md``).
Both :mod:`turnstore.testing`'s in-memory stores and the gRPC stores
(:mod:`turnstore.events`, :mod:`turnstore.history`) satisfy them, so agent
code written against these protocols runs on either.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from turnstore.models import AgentEventEnvelope, ConversationSnapshot, StoredTurnEvents


@runtime_checkable
class EventStore(Protocol):
    """Turn-scoped event streams of threads.

    Errors are :class:`~turnstore.errors.TurnstoreError` subclasses:
    ``TurnFinishedError`` for an append to a finished turn,
    ``TurnAlreadyFinishedError`` for a second finish, ``InvalidArgumentError``
    for an empty thread id or a negative turn.
    """

    async def append(self, thread_id: str, turn: int, envelope: AgentEventEnvelope) -> int:
        """Store ``envelope`` at the end of ``turn``; return its position in the thread.

        Positions are 0-based, in commit order, and never reused until the
        thread is cleared. The ``sequence`` of the envelope is kept as given.
        """
        ...

    async def finish_turn(self, thread_id: str, turn: int) -> None:
        """Close ``turn``. A turn never appended to becomes an empty finished turn."""
        ...

    async def get_turn(self, thread_id: str, turn: int) -> StoredTurnEvents | None:
        """The turn, or None for an unknown thread or turn."""
        ...

    async def get_turns(self, thread_id: str) -> list[StoredTurnEvents]:
        """Every turn in ascending turn order; empty for an unknown thread."""
        ...

    async def clear(self, thread_id: str) -> None:
        """Remove everything of the thread; a no-op for an unknown thread."""
        ...

    async def get_events(self, thread_id: str) -> list[AgentEventEnvelope]:
        """All envelopes, turn by turn in ascending order, each turn in append order."""
        ...

    async def event_count(self, thread_id: str) -> int:
        """The number of envelopes in the thread (0 for an unknown thread)."""
        ...

    async def get_events_since(self, thread_id: str, offset: int) -> list[AgentEventEnvelope]:
        """The envelopes of :meth:`get_events` after its first ``offset``.

        An offset at or past the end gives an empty list; a negative offset
        raises ``InvalidArgumentError``.
        """
        ...


@runtime_checkable
class HistoryStore(Protocol):
    """Snapshots of one conversation (the store object is bound to it)."""

    async def save(self, snapshot: ConversationSnapshot) -> None:
        """Store ``snapshot`` as a full overwrite of the previous one."""
        ...

    async def load(self) -> ConversationSnapshot | None:
        """The latest saved snapshot, or None when nothing was ever saved."""
        ...
