"""The OpenAI Agents SDK's ``Session`` over a turnstore daemon: :class:`TurnstoreSession`.

Install with ``pip install 'turnstore[openai-agents]'``. What is stored where
(``docs/openai-agents.md`` says the same for users):

- One thread per session: ``thread_prefix + session_id`` (default prefix
  ``openai-agents/``), every event in turn 1, which is never finished.
- Each item is one event of type ``session_item`` whose body is
  ``{"item": ITEM}``, the item's JSON as the SDK gave it; ``add_items``
  appends all its items in one atomic append (in chunks only when they pass
  the daemon's per-append limits), so concurrent ``add_items`` lose nothing.
- An item whose event would pass ``part_bytes`` (the daemon refuses events
  over its 1 MiB default) is split: its JSON text is cut into consecutive
  ``session_item_part`` events ``{"index": i, "count": n, "json": PIECE}`` of
  one append (so they are adjacent), joined again on reading.
- ``pop_item`` removes nothing: it appends a ``session_pop`` tombstone
  ``{"popped": POSITION, "popped_event_id": ID}`` naming the position and event id
  of the item it pops (a tombstone whose id does not match hides nothing,
  so one appended into a thread cleared and refilled meanwhile is inert), under
  ``expected_next_position`` (the thread's length when it read the item),
  so two concurrent pops never return the same item: one wins, the other
  reads again and pops the next one. Positions are never reused, so a
  replay of the thread stays exactly-once.
- ``get_items(limit)`` reads the thread newest first in pages (the first a
  newest-first read of the last events, the next ones ranges below it, all
  costing what they return), applying tombstones, until ``limit`` live items
  are found: never the whole thread. ``get_items()`` reads the thread once.
- ``clear_session`` clears the thread (one atomic daemon call).

Every other reader (the CLI, SSE, the inspector, other languages) can read
the thread: items are plain JSON events.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from turnstore.client import TurnstoreClient
from turnstore.errors import VersionConflictError
from turnstore.events import TurnstoreEventStore
from turnstore.models import AgentEventEnvelope
from turnstore.results import StoredEvent

if TYPE_CHECKING:
    from agents.items import TResponseInputItem
    from agents.memory.session_settings import SessionSettings

__all__ = ["ITEM_TYPE", "PART_TYPE", "POP_TYPE", "TurnstoreSession"]

ITEM_TYPE: Final = "session_item"
PART_TYPE: Final = "session_item_part"
POP_TYPE: Final = "session_pop"
# The one turn a session's events go to.
SESSION_TURN: Final = 1
# Events larger than this are split (the daemon's default event limit is 1 MiB,
# envelope included).
DEFAULT_PART_BYTES: Final = 512 * 1024
# At most this many events, and about this many bytes, per append of add_items.
_EVENTS_PER_APPEND: Final = 1000
_BYTES_PER_APPEND: Final = 16 * 1024 * 1024
# Newest-first pages: the limit asked for (at least this), then twice what is missing.
_FIRST_PAGE: Final = 16
_MAX_PAGE: Final = 4096


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


class _Walk:
    """Live items found walking a session's events from the newest back.

    Fed events in descending position order; ``items`` collects
    ``(position, event_id, item)`` of live items, newest first. A tombstone is newer
    than the item it pops, so it is always seen first.
    """

    def __init__(self) -> None:
        self.items: list[tuple[int, str, Any]] = []
        # Position -> the event id of the item popped there.
        self._popped: dict[int, str] = {}
        self._parts: list[str] = []  # pieces of a split item, newest piece first

    def feed(self, event: StoredEvent) -> None:
        body = event.envelope.event
        kind = body.get("type")
        if kind == POP_TYPE:
            self._popped[int(body["popped"])] = str(body.get("popped_event_id", ""))
        elif kind == ITEM_TYPE:
            if not self._is_popped(event):
                self.items.append((event.position, event.envelope.event_id, body["item"]))
        elif kind == PART_TYPE:
            self._parts.append(str(body["json"]))
            if int(body["index"]) == 0:
                text, self._parts = "".join(reversed(self._parts)), []
                if not self._is_popped(event):
                    item = json.loads(text)
                    self.items.append((event.position, event.envelope.event_id, item))

    def _is_popped(self, event: StoredEvent) -> bool:
        return self._popped.get(event.position) == event.envelope.event_id


class TurnstoreSession:
    """An OpenAI Agents SDK ``Session`` whose items live in a turnstore thread.

    ``TurnstoreSession(session_id, target="127.0.0.1:7070")`` opens a client
    of its own on first use (close it with :meth:`aclose`, or use ``async
    with``); ``client=`` shares an open :class:`~turnstore.TurnstoreClient`
    instead (then the caller closes it). ``token`` is passed to an own
    client. ``session_settings`` is the SDK's (its ``limit`` is the default
    of :meth:`get_items`). See the module docstring for what is stored where.
    """

    session_settings: SessionSettings | None

    def __init__(
        self,
        session_id: str,
        *,
        target: str | None = None,
        client: TurnstoreClient | None = None,
        token: str | None = None,
        thread_prefix: str = "openai-agents/",
        session_settings: SessionSettings | None = None,
        part_bytes: int = DEFAULT_PART_BYTES,
    ) -> None:
        if (target is None) == (client is None):
            raise ValueError("give exactly one of target= and client=")
        if not session_id:
            raise ValueError("session_id must not be empty")
        if part_bytes < 1024:
            raise ValueError("part_bytes must be at least 1024")
        self.session_id = session_id
        self.thread_id = thread_prefix + session_id
        self.session_settings = session_settings
        self._target = target
        self._token = token
        self._client = client
        self._owns_client = client is None
        self._part_bytes = part_bytes

    async def __aenter__(self) -> TurnstoreSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client this session opened (a shared ``client=`` is left open)."""
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _events(self) -> TurnstoreEventStore:
        if self._client is None:
            # Made here, in the caller's event loop, which a client is bound to.
            assert self._target is not None
            self._client = TurnstoreClient(self._target, token=self._token)
        return self._client.events

    # -- the Session protocol ---------------------------------------------------

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The last ``limit`` live items in order (every item when None).

        ``limit`` None falls back to ``session_settings.limit``. With a
        limit, the thread is read newest first in pages until ``limit`` live
        items are found, never whole; 0 or less returns nothing.
        """
        if limit is None and self.session_settings is not None:
            limit = self.session_settings.limit
        if limit is None:
            return await self._all_items()
        if limit <= 0:
            return []
        walk, _ = await self._walk_back(limit)
        return [item for _, _, item in reversed(walk.items[:limit])]

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Append ``items`` in order, in one atomic append when within the daemon's limits."""
        envelopes: list[AgentEventEnvelope] = []
        for item in items:
            envelopes += self._item_envelopes(item)
        events = self._events()
        batch: list[AgentEventEnvelope] = []
        batch_bytes = 0
        for envelope in envelopes:
            size = len(envelope.to_json())
            # Never cut between the parts of one item (they must stay adjacent).
            is_continuation = envelope.event["type"] == PART_TYPE and envelope.event["index"] > 0
            full = len(batch) >= _EVENTS_PER_APPEND or batch_bytes + size > _BYTES_PER_APPEND
            if batch and full and not is_continuation:
                await events.append_many(self.thread_id, SESSION_TURN, batch)
                batch, batch_bytes = [], 0
            batch.append(envelope)
            batch_bytes += size
        if batch:
            await events.append_many(self.thread_id, SESSION_TURN, batch)

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove the newest live item and return it (None when there is none).

        Atomic: its tombstone is appended only if nothing was appended since
        the item was read, else the pop reads again; two concurrent pops
        never return the same item.
        """
        events = self._events()
        while True:
            walk, next_position = await self._walk_back(1)
            if not walk.items:
                return None
            position, event_id, item = walk.items[0]
            popped = {"type": POP_TYPE, "popped": position, "popped_event_id": event_id}
            tombstone = AgentEventEnvelope(uuid.uuid4(), 0, _now(), popped)
            try:
                await events.append(
                    self.thread_id,
                    SESSION_TURN,
                    tombstone,
                    expected_next_position=next_position,
                )
            except VersionConflictError:
                continue  # another writer came first: read again
            result: TResponseInputItem = item
            return result

    async def clear_session(self) -> None:
        """Remove every item: the session's thread is cleared, atomically."""
        await self._events().clear(self.thread_id)

    # -- reading ----------------------------------------------------------------

    async def _all_items(self) -> list[Any]:
        walk = _Walk()
        # Read forwards once, then walk back over it in memory.
        stored = [event async for event in self._events().read_events(self.thread_id)]
        for event in reversed(stored):
            walk.feed(event)
        return [item for _, _, item in reversed(walk.items)]

    async def _walk_back(self, wanted: int) -> tuple[_Walk, int]:
        """Walk newest first until ``wanted`` live items are found; the walk and the
        thread's next position as of its first read (0: empty thread)."""
        events = self._events()
        walk = _Walk()
        page = min(max(wanted, _FIRST_PAGE), _MAX_PAGE)
        newest = [
            e async for e in events.read_events(self.thread_id, limit=page, newest_first=True)
        ]
        if not newest:
            return walk, 0
        next_position = newest[0].position + 1
        low = next_position
        while True:
            for event in newest:
                walk.feed(event)
            if newest:
                low = newest[-1].position
            if len(walk.items) >= wanted or low == 0 or not newest:
                return walk, next_position
            # Below what was read, by absolute positions: appends since the
            # first read do not shift them.
            # Twice what is still missing (tombstones hide items, two events per pop).
            page = min(max(2 * (wanted - len(walk.items)), _FIRST_PAGE), _MAX_PAGE)
            start = max(low - page, 0)
            older = events.read_events(self.thread_id, start, limit=low - start)
            newest = list(reversed([event async for event in older]))

    def _item_envelopes(self, item: Any) -> list[AgentEventEnvelope]:
        text = _dumps(item)
        if len(text.encode()) + 512 <= self._part_bytes:
            event: dict[str, Any] = {"type": ITEM_TYPE, "item": json.loads(text)}
            return [AgentEventEnvelope(uuid.uuid4(), 0, _now(), event)]
        pieces = self._pieces(text)
        return [
            AgentEventEnvelope(
                uuid.uuid4(),
                index,
                _now(),
                {"type": PART_TYPE, "index": index, "count": len(pieces), "json": piece},
            )
            for index, piece in enumerate(pieces)
        ]

    def _pieces(self, text: str) -> list[str]:
        """Cut ``text`` so that each piece, escaped as a JSON string, fits a part."""
        room = self._part_bytes - 512
        pieces: list[str] = []
        start = 0
        while start < len(text):
            size = room
            while True:
                piece = text[start : start + size]
                if len(_dumps(piece).encode()) <= room or size == 1:
                    break
                size //= 2
            pieces.append(piece)
            start += len(piece)
        return pieces
