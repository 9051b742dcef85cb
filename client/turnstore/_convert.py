"""Conversions between the client's types and the wire messages."""

from __future__ import annotations

import json
from typing import Final

from turnstore.errors import EventFormatError
from turnstore.models import AgentEventEnvelope
from turnstore.v1 import turnstore_pb2 as pb

JSON: Final = "application/json"


def envelope_to_proto(envelope: AgentEventEnvelope) -> pb.EventEnvelope:
    """The wire form of an envelope: header fields typed, the rest as a JSON body."""
    body = {key: value for key, value in envelope.event.items() if key != "type"}
    try:
        encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as error:
        raise EventFormatError(f"event is not JSON-serialisable: {error}") from error
    try:
        return pb.EventEnvelope(
            event_id=envelope.event_id,
            sequence=envelope.sequence,
            timestamp=envelope.timestamp,
            type=envelope.type,
            body=encoded,
            content_type=JSON,
        )
    except (TypeError, ValueError) as error:  # lone surrogates, non-str ids
        raise EventFormatError(f"envelope cannot be encoded: {error}") from error


def envelope_from_proto(message: pb.EventEnvelope) -> AgentEventEnvelope:
    """The envelope of a wire message; raises EventFormatError for a non-JSON body."""
    if message.content_type not in ("", JSON):
        raise EventFormatError(
            f"event {message.event_id!r} is encoded as {message.content_type!r}; "
            "this client reads only application/json"
        )
    try:
        body = json.loads(message.body) if message.body else {}
    except ValueError as error:
        raise EventFormatError(f"event {message.event_id!r} has invalid JSON: {error}") from error
    if not isinstance(body, dict):
        raise EventFormatError(f"event {message.event_id!r} body is not a JSON object")
    return AgentEventEnvelope(
        message.event_id, message.sequence, message.timestamp, {"type": message.type, **body}
    )


class StoredEvent:
    """An envelope as stored: with its position, turn and commit time.

    Decoding the envelope (its JSON body) is deferred until ``envelope`` is
    first read, so a reader that only counts, filters by position or turn, or
    forwards ``message`` pays no per-event JSON cost. ``envelope`` raises
    EventFormatError for a body this client cannot decode.
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
        return f"StoredEvent(position={self.position}, turn={self.turn}, {self.envelope!r})"
