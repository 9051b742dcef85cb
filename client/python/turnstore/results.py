"""The values the client's reads return: stored events and snapshot versions.

:class:`StoredEvent` is what ``read_events`` and ``Replay`` yield,
:class:`VersionedSnapshot` what ``TurnstoreHistoryStore.load_versioned`` returns,
:class:`SnapshotVersionInfo` one entry of ``list_versions``, :class:`Blob` what
``load_bytes`` returns,
:class:`BatchResult` one outcome of ``batch``. All are
importable from ``turnstore`` itself; none is built by callers in normal use.
"""

from __future__ import annotations

from dataclasses import dataclass

from turnstore._convert import envelope_from_proto
from turnstore.models import AgentEventEnvelope, ConversationSnapshot
from turnstore.v1 import turnstore_pb2 as pb

__all__ = [
    "BatchResult",
    "Blob",
    "SnapshotVersionInfo",
    "StoredEvent",
    "VersionedSnapshot",
]


class StoredEvent:
    """An envelope as stored: with its position, turn and commit time.

    ``position`` is the event's place in its thread (0-based, assigned at
    commit, never reused until the thread is cleared), ``turn`` the turn it
    was appended to, ``stored_at_unix_nanos`` when the daemon committed it
    (its clock, nanoseconds since the Unix epoch). ``message`` is the wire
    ``StoredEvent`` it was read from (None when built from an envelope).

    Decoding the envelope (its JSON body) is deferred until ``envelope`` is
    first read, so a reader that only counts, filters by position or turn, or
    forwards ``message`` pays no per-event JSON cost. ``envelope`` raises
    EventFormatError for a body this client cannot decode; the repr never
    decodes, so printing such an event does not raise.
    """

    __slots__ = ("_envelope", "message", "position", "stored_at_unix_nanos", "turn")

    def __init__(
        self,
        position: int,
        turn: int,
        stored_at_unix_nanos: int,
        envelope: AgentEventEnvelope | None = None,
        message: pb.StoredEvent | None = None,
    ) -> None:
        if envelope is None and message is None:
            raise ValueError("a StoredEvent needs an envelope or a message")
        self.position = position
        self.turn = turn
        self.stored_at_unix_nanos = stored_at_unix_nanos
        self._envelope = envelope
        self.message = message

    @classmethod
    def from_proto(cls, message: pb.StoredEvent) -> StoredEvent:
        """Wrap a wire ``StoredEvent``; its envelope is decoded on first use."""
        return cls(message.position, message.turn, message.stored_at_unix_nanos, None, message)

    @property
    def envelope(self) -> AgentEventEnvelope:
        """The agent's envelope (decoded from the message on first access)."""
        if self._envelope is None:
            assert self.message is not None
            self._envelope = envelope_from_proto(self.message.envelope)
        return self._envelope

    def __repr__(self) -> str:
        # Never decodes: printing an event with a broken body must not raise.
        if self._envelope is not None:
            event_id, event_type = self._envelope.event_id, self._envelope.type
        else:
            assert self.message is not None
            event_id, event_type = self.message.envelope.event_id, self.message.envelope.type
        return (
            f"StoredEvent(position={self.position}, turn={self.turn}, "
            f"event_id={event_id!r}, type={event_type!r})"
        )


@dataclass(frozen=True)
class VersionedSnapshot:
    """A loaded snapshot with its version, as ``load_versioned`` returns it.

    ``version`` is 1 for a key's first save and one more for each later
    save; pass it as ``expected_version`` to save only if nobody saved in
    between. Versions never restart after a delete. ``saved_at_unix_nanos``
    is when the daemon committed the save (its clock, nanoseconds since the
    Unix epoch).
    """

    snapshot: ConversationSnapshot
    version: int
    saved_at_unix_nanos: int


@dataclass(frozen=True)
class SnapshotVersionInfo:
    """One kept version of a key, without its data, as ``list_versions`` returns it.

    ``size_bytes`` is the size of the stored data (the snapshot's JSON);
    ``content_type`` its encoding, ``application/json`` for what this client
    saves. ``saved_at_unix_nanos`` is when the daemon committed that save.
    """

    version: int
    saved_at_unix_nanos: int
    size_bytes: int
    content_type: str


@dataclass(frozen=True)
class Blob:
    """A snapshot as stored, its data as bytes, as ``load_bytes`` returns it.

    ``data`` is exactly what was saved (whatever its ``content_type``: JSON
    saved by ``save`` or another client comes back as its UTF-8 text);
    ``version`` the version it got; ``saved_at_unix_nanos`` when the daemon
    committed it.
    """

    data: bytes
    content_type: str
    version: int
    saved_at_unix_nanos: int


@dataclass(frozen=True)
class BatchResult:
    """One operation's outcome in ``client.batch``, at the operation's index.

    ``version``: the version a save got (0 for deletes). ``removed_versions``:
    the snapshot versions a delete or delete-prefix removed. ``removed_keys``:
    the keys it deleted (a delete: 1 if the key held a snapshot, else 0).
    """

    version: int
    removed_versions: int
    removed_keys: int
