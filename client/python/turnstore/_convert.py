"""Conversions between the client's types and the wire messages."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final, TypeVar

from turnstore import _json
from turnstore.errors import EventFormatError
from turnstore.models import AgentEventEnvelope
from turnstore.v1 import turnstore_pb2 as pb

JSON: Final = "application/json"

T = TypeVar("T")

_new = object.__new__
_set = object.__setattr__


def fill_envelope(message: pb.EventEnvelope, envelope: AgentEventEnvelope) -> pb.EventEnvelope:
    """Write an envelope's wire form into ``message`` (e.g. ``request.events.add()``).

    Header fields are typed; the event's other fields become a JSON body.
    Raises EventFormatError, naming the key path, for a value strict JSON
    cannot carry (NaN, a non-string key, bytes, a datetime, ...).
    """
    event = envelope.event
    body = {key: value for key, value in event.items() if key != "type"}
    try:
        message.body = _json.dumps(body, "event")
    except _json.NotJsonError as error:
        raise EventFormatError(f"event {envelope.event_id!r} cannot be stored: {error}") from None
    try:
        message.event_id = envelope.event_id
        message.timestamp = envelope.timestamp
        message.type = event["type"]
    except (TypeError, ValueError) as error:  # lone surrogates
        raise EventFormatError(f"envelope cannot be encoded: {error}") from error
    message.sequence = envelope.sequence
    message.content_type = JSON
    return message


def envelope_from_proto(message: pb.EventEnvelope) -> AgentEventEnvelope:
    """The envelope of a wire message; raises EventFormatError for a non-JSON body.

    The fast path of every read: the daemon checked the header on write, so
    the envelope is built without :class:`AgentEventEnvelope`'s checks.
    """
    content_type = message.content_type
    if content_type != JSON and content_type:
        raise EventFormatError(
            f"event {message.event_id!r} is encoded as {message.content_type!r}; "
            "this client reads only application/json"
        )
    data = message.body
    try:
        body = _json.loads(data) if data else {}
    except ValueError as error:
        raise EventFormatError(f"event {message.event_id!r} has invalid JSON: {error}") from error
    if type(body) is not dict:
        raise EventFormatError(f"event {message.event_id!r} body is not a JSON object")
    event = {"type": message.type}
    event.update(body)
    envelope: AgentEventEnvelope = _new(AgentEventEnvelope)
    _set(
        envelope,
        "__dict__",
        {
            "event_id": message.event_id,
            "sequence": message.sequence,
            "timestamp": message.timestamp,
            "event": event,
        },
    )
    return envelope


@contextlib.contextmanager
def _collector_held_off() -> Iterator[None]:
    """Hold the cyclic garbage collector off while a message's envelopes are built.

    Each envelope allocates a few containers, and without this a read of many
    events triggers a collection every few hundred of them, which walks every
    young object again (a third of the decoding time). What is built is
    acyclic, and nothing else runs meanwhile: a decoding loop never awaits.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def envelopes_from_protos(messages: Iterable[pb.StoredEvent]) -> list[AgentEventEnvelope]:
    """The envelopes of a message's stored events, decoded in one go."""
    with _collector_held_off():
        return [envelope_from_proto(message.envelope) for message in messages]


class RowsFormatError(ValueError):
    """A JSON rows message this client cannot decode (not the form the daemon writes)."""


def _envelope_of_row(row: list[object]) -> AgentEventEnvelope:
    _position, _turn, _stored_at, event_id, sequence, timestamp, event_type, body = row
    event = {"type": event_type}
    event.update(body)  # type: ignore[call-overload]  # a dict; TypeError otherwise
    envelope: AgentEventEnvelope = _new(AgentEventEnvelope)
    _set(
        envelope,
        "__dict__",
        {"event_id": event_id, "sequence": sequence, "timestamp": timestamp, "event": event},
    )
    return envelope


def _stored_of_row(row: list[Any]) -> tuple[int, int, int, AgentEventEnvelope]:
    return row[0], row[1], row[2], _envelope_of_row(row)


def _from_rows(data: bytes, build: Callable[[list[Any]], T]) -> list[T]:
    """``build`` of each row of ``events_json``, parsed once; RowsFormatError when it
    is not an array of eight-value rows with an object body (a daemon writes
    nothing else: it checks every body with the same parser on write)."""
    with _collector_held_off():
        try:
            return [build(row) for row in _json.loads(data)]
        except (ValueError, TypeError, IndexError) as error:
            raise RowsFormatError(f"events_json cannot be decoded: {error}") from None


def envelopes_from_rows(data: bytes) -> list[AgentEventEnvelope]:
    """The envelopes of a message's ``events_json`` (EVENT_ENCODING_JSON_ROWS), in one parse.

    Raises RowsFormatError as :func:`_from_rows` says.
    """
    return _from_rows(data, _envelope_of_row)


def rows_with_envelopes(data: bytes) -> list[tuple[int, int, int, AgentEventEnvelope]]:
    """``(position, turn, stored_at_unix_nanos, envelope)`` of each row of ``events_json``.

    Raises RowsFormatError as :func:`_from_rows` says.
    """
    return _from_rows(data, _stored_of_row)
