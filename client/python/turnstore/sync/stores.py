"""The blocking stores of :mod:`turnstore.sync`: the async stores' methods, on the façade's loop."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

from turnstore.models import AgentEventEnvelope, ConversationSnapshot, StoredTurnEvents
from turnstore.replay import ReplayItem
from turnstore.results import Blob, SnapshotVersionInfo, StoredEvent, VersionedSnapshot

if TYPE_CHECKING:
    from turnstore.sync.client import TurnstoreClient

__all__ = ["SyncEventStore", "SyncHistoryStore"]


class SyncHistoryStore:
    """:class:`turnstore.history.TurnstoreHistoryStore`'s methods, blocking.

    Obtain it as ``client.history(key)`` of a :class:`TurnstoreClient`; the
    methods behave (and raise) as the async store's of the same names.
    """

    def __init__(self, client: TurnstoreClient, key: str) -> None:
        self._client = client
        self.key = key
        # Checks the key at once, as the async client does.
        self._store = client.async_client.history(key)

    def save(self, snapshot: ConversationSnapshot) -> None:
        """Store ``snapshot`` as a full overwrite of the previous one, durably."""
        self._client.call(lambda _: self._store.save(snapshot))

    def save_versioned(
        self, snapshot: ConversationSnapshot, expected_version: int | None = None
    ) -> int:
        """Like :meth:`save`, returning the new version; see the async store's."""
        return self._client.call(lambda _: self._store.save_versioned(snapshot, expected_version))

    def load(self) -> ConversationSnapshot | None:
        """The latest saved snapshot, or None when nothing was ever saved."""
        return self._client.call(lambda _: self._store.load())

    def load_versioned(self, version: int | None = None) -> VersionedSnapshot | None:
        """The latest snapshot (or the kept ``version``) with its version, or None."""
        return self._client.call(lambda _: self._store.load_versioned(version))

    def save_bytes(
        self, data: bytes, content_type: str, expected_version: int | None = None
    ) -> int:
        """Store ``data`` (any bytes, with ``content_type``) as the key's next version."""
        return self._client.call(
            lambda _: self._store.save_bytes(data, content_type, expected_version)
        )

    def load_bytes(self, version: int | None = None) -> Blob | None:
        """The latest (or the kept ``version``) as stored: bytes and content type; or None."""
        return self._client.call(lambda _: self._store.load_bytes(version))

    def list_versions(self) -> list[SnapshotVersionInfo]:
        """The kept versions, newest first; empty for an unknown or deleted key."""
        return self._client.call(lambda _: self._store.list_versions())

    def delete(self) -> int:
        """Delete every kept version; return how many."""
        return self._client.call(lambda _: self._store.delete())


class SyncEventStore:
    """:class:`turnstore.events.TurnstoreEventStore`'s methods, blocking.

    Reached as ``client.events`` of a :class:`TurnstoreClient`; the methods
    behave (and raise) as the async store's of the same names. Streaming
    reads (:meth:`read_events`, :meth:`replay`) return iterators that fetch
    as they are advanced; close a following replay's iterator to end it.
    """

    def __init__(self, client: TurnstoreClient) -> None:
        self._client = client

    def append(self, thread_id: str, turn: int, envelope: AgentEventEnvelope) -> int:
        """Store ``envelope`` at the end of ``turn``; return its position in the thread."""
        return self._client.call(lambda c: c.events.append(thread_id, turn, envelope))

    def append_many(
        self, thread_id: str, turn: int, envelopes: Sequence[AgentEventEnvelope]
    ) -> list[int]:
        """Store ``envelopes`` at the end of ``turn`` atomically; return their positions."""
        return self._client.call(lambda c: c.events.append_many(thread_id, turn, envelopes))

    def finish_turn(self, thread_id: str, turn: int) -> None:
        """Close ``turn``."""
        self._client.call(lambda c: c.events.finish_turn(thread_id, turn))

    def get_turn(self, thread_id: str, turn: int) -> StoredTurnEvents | None:
        """One turn's events and whether it is finished, or None."""
        return self._client.call(lambda c: c.events.get_turn(thread_id, turn))

    def get_turns(self, thread_id: str) -> list[StoredTurnEvents]:
        """Every turn of the thread, in turn order."""
        return self._client.call(lambda c: c.events.get_turns(thread_id))

    def clear(self, thread_id: str) -> None:
        """Remove every event and turn of the thread."""
        self._client.call(lambda c: c.events.clear(thread_id))

    def get_events(self, thread_id: str) -> list[AgentEventEnvelope]:
        """Every event of the thread, in position order."""
        return self._client.call(lambda c: c.events.get_events(thread_id))

    def event_count(self, thread_id: str) -> int:
        """How many events the thread holds."""
        return self._client.call(lambda c: c.events.event_count(thread_id))

    def get_events_since(self, thread_id: str, offset: int) -> list[AgentEventEnvelope]:
        """The thread's events from position ``offset`` on."""
        return self._client.call(lambda c: c.events.get_events_since(thread_id, offset))

    def read_events(self, thread_id: str, offset: int = 0) -> Generator[StoredEvent, None, None]:
        """The thread's stored events (with positions, turns, times) from ``offset``."""
        return self._client.iterate(lambda c: c.events.read_events(thread_id, offset))

    def replay(
        self, thread_id: str, after: int | None = None, *, follow: bool = False, **options: Any
    ) -> Generator[ReplayItem, None, None]:
        """The async store's ``replay`` (same options), as a blocking iterator."""
        return self._client.iterate(
            lambda c: c.events.replay(thread_id, after, follow=follow, **options)
        )
