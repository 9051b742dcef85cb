"""Conversions between the client's types and the wire messages."""

from __future__ import annotations

import json
from typing import Final

from turnstore.errors import EventFormatError
from turnstore.models import AgentEventEnvelope
from turnstore.v1 import turnstore_pb2 as pb

JSON: Final = "application/json"


# One encoder for all calls: json.dumps with options builds a new one each time.
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def fill_envelope(message: pb.EventEnvelope, envelope: AgentEventEnvelope) -> pb.EventEnvelope:
    """Write an envelope's wire form into ``message`` (e.g. ``request.events.add()``).

    Header fields are typed; the event's other fields become a JSON body.
    Raises EventFormatError for fields that JSON or UTF-8 cannot encode.
    """
    body = dict(envelope.event)
    event_type = body.pop("type")
    try:
        message.body = _encode_json(body).encode()
        message.event_id = envelope.event_id
        message.sequence = envelope.sequence
        message.timestamp = envelope.timestamp
        message.type = event_type
    except (TypeError, ValueError) as error:  # unserialisable values, lone surrogates
        raise EventFormatError(f"envelope cannot be encoded: {error}") from error
    message.content_type = JSON
    return message


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
