"""Request envelopes checked and encoded for the engine (Append and AppendStream).

The engine sees envelopes encoded, so their header fields and JSON bodies
are checked here.
"""

from __future__ import annotations

from typing import Any, Final

from turnstore.server.api.bodies import check_json_body, event_content_type
from turnstore.server.api.grpc.servicer import JSON
from turnstore.server.api.grpc.wire_scan import RefusedRequest
from turnstore.server.storage.errors import DaemonError, InvalidArgumentError
from turnstore.server.storage.values import NewEvent
from turnstore.v1 import turnstore_pb2 as pb

# Header field limits checked here because the engine sees envelopes encoded.
MAX_TYPE_BYTES: Final = 128
MAX_TIMESTAMP_BYTES: Final = 64
MAX_CONTENT_TYPE_BYTES: Final = 128


def _check_header(index: int, envelope: pb.EventEnvelope) -> None:
    """Raise InvalidArgumentError for a missing type or an oversized header field."""
    for name, value, limit, required in (
        ("type", envelope.type, MAX_TYPE_BYTES, True),
        ("timestamp", envelope.timestamp, MAX_TIMESTAMP_BYTES, False),
        ("content_type", envelope.content_type, MAX_CONTENT_TYPE_BYTES, False),
    ):
        if required and not value:
            raise InvalidArgumentError(f"events[{index}].{name}", "must not be empty")
        size = len(value.encode("utf-8"))
        if size > limit:
            raise InvalidArgumentError(
                f"events[{index}].{name}", f"is {size} bytes, over the limit of {limit}"
            )


def new_events(envelopes: Any, max_events: int) -> list[NewEvent]:
    """Check and encode request envelopes for the engine.

    Their count is checked first, so an over-long batch costs no per-event work.
    """
    if len(envelopes) > max_events:
        raise InvalidArgumentError(
            "events",
            f"holds {len(envelopes)} events, over the limit of {max_events} per append",
        )
    events = []
    for index, envelope in enumerate(envelopes):
        content_type = envelope.content_type
        # Fast path: a UTF-8 character is at most 4 bytes, so short fields fit.
        event_type = envelope.type
        if not (
            event_type
            and len(event_type) <= MAX_TYPE_BYTES // 4
            and len(envelope.timestamp) <= MAX_TIMESTAMP_BYTES // 4
            and len(content_type) <= MAX_CONTENT_TYPE_BYTES // 4
        ):
            _check_header(index, envelope)
        if content_type != JSON:
            envelope.content_type = event_content_type(index, content_type)
        check_json_body(index, envelope.event_id, envelope.body)
        events.append(NewEvent(envelope.event_id, envelope.SerializeToString()))
    return events


def convert_items(message: Any, max_events: int) -> list[list[NewEvent] | DaemonError] | None:
    """:func:`new_events` of every item of a stream message, each error kept for its item.

    For the thread pool: checking and encoding the events of a large message
    (their JSON bodies above all) would block the event loop for seconds.
    None for a refused message.
    """
    if isinstance(message, RefusedRequest):
        return None
    converted: list[list[NewEvent] | DaemonError] = []
    for item in (message, *message.more):
        try:
            converted.append(new_events(item.events, max_events))
        except DaemonError as error:
            converted.append(error)
    return converted
