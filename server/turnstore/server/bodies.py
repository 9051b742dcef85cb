"""What the daemon accepts as an event body marked ``application/json``.

Every client in every language must be able to read every event back, so
a body that claims to be JSON must be strict JSON (RFC 8259: no NaN or
infinities, no trailing commas, valid UTF-8, paired surrogates) and an
object, and must not repeat the envelope's own keys (the flat JSON form of
an envelope puts the body's keys beside ``event_id``, ``sequence``,
``timestamp`` and ``type``, and could not tell them apart). orjson is the
validator: what it parses, Python, TypeScript and Rust readers parse too.
"""

from __future__ import annotations

from typing import Final

import orjson

from turnstore.server.errors import InvalidArgumentError

JSON: Final = "application/json"
ENVELOPE_KEYS: Final = frozenset(("event_id", "sequence", "timestamp", "type"))


def event_content_type(index: int, content_type: str) -> str:
    """The content type an event is stored with: always ``application/json``.

    Empty means JSON, and so does ``application/json`` with parameters
    (``; charset=utf-8``: JSON is always UTF-8) in any letter case. Any other
    encoding is refused: the readers of the store contracts in every
    language read JSON events only, so an event in another encoding would
    make its turn unreadable for them.
    """
    if content_type == JSON or not content_type:
        return JSON
    if content_type.split(";", 1)[0].strip().lower() == JSON:
        return JSON
    raise InvalidArgumentError(
        f"events[{index}].content_type",
        f"is {content_type!r}; events are stored as application/json only, so that every "
        "client in every language can read them",
    )


def check_json_body(index: int, event_id: str, body: bytes) -> None:
    """Raise InvalidArgumentError naming the event unless ``body`` is a strict JSON object.

    An empty body stands for the empty object.
    """
    if not body:
        return
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidArgumentError(
            f"events[{index}].body", f"of event {event_id!r} is not strict JSON: {error}"
        ) from None
    if type(value) is not dict:
        raise InvalidArgumentError(
            f"events[{index}].body",
            f"of event {event_id!r} is a JSON {type(value).__name__}, not an object",
        )
    clashing = ENVELOPE_KEYS.intersection(value)
    if clashing:
        raise InvalidArgumentError(
            f"events[{index}].body",
            f"of event {event_id!r} holds envelope keys {sorted(clashing)}, which the flat "
            "JSON form of the envelope could not tell apart",
        )
