"""What the daemon accepts as an event body marked ``application/json``.

Every client in every language must be able to read every event back, so
a body that claims to be JSON must be strict JSON (RFC 8259: no NaN or
infinities, no trailing commas, valid UTF-8, paired surrogates) and an
object, and must not repeat the envelope's own keys (the flat JSON form of
an envelope puts the body's keys beside ``event_id``, ``sequence``,
``timestamp`` and ``type``, and could not tell them apart). orjson is the
validator: what it parses, Python, TypeScript and Rust readers parse too.

Bodies and JSON snapshots are nested at most :data:`MAX_JSON_DEPTH` levels
deep. Readers wrap what they return (the HTTP API puts events inside
``{"turns": [{"events": [...]}]}``), and serde_json, the Rust client's
parser, refuses 128 levels: 64 leaves room for any wrapper, and orjson
(which refuses to write past 254) re-encodes every stored value.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Final

import orjson

from turnstore.server.storage.errors import InvalidArgumentError

JSON: Final = "application/json"
ENVELOPE_KEYS: Final = frozenset(("event_id", "sequence", "timestamp", "type"))
# The deepest nesting of arrays and objects in an event body or a JSON
# snapshot; the body object itself is level 1.
MAX_JSON_DEPTH: Final = 64

# A JSON string, escapes included (the unrolled form: no backtracking).
# An unclosed one runs to the end of the text: every quote a scan meets
# starts a match, so the scan stays linear whatever the text (a string that
# had to be closed would be tried again from every later quote).
_JSON_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
# +1 for an opening bracket, -1 for a closing one, indexed by byte.
_DEPTH_STEP: Final = [1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256)]


def json_too_deep(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text ``data`` nests arrays and objects deeper than ``limit``.

    Brackets inside strings do not count. Cheap for the usual body: a text
    with at most ``limit`` opening brackets cannot be too deep, which two
    C-speed counts tell; only otherwise are strings cut out and the depth
    summed bracket by bracket (at C speed, linear in the text). For text
    that is not JSON the answer is a guess, never an error.
    """
    # JSON deeper than ``limit`` takes limit + 1 pairs of brackets at least.
    if len(data) <= 2 * limit + 1 or data.count(b"{") + data.count(b"[") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > limit


def too_deep_problem(limit: int = MAX_JSON_DEPTH) -> str:
    """The refusal's wording, naming the limit."""
    return f"nests arrays and objects deeper than the limit of {limit} levels"


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
        problem = too_deep_problem() if json_too_deep(body) else f"is not strict JSON: {error}"
        raise InvalidArgumentError(
            f"events[{index}].body", f"of event {event_id!r} {problem}"
        ) from None
    if json_too_deep(body):
        raise InvalidArgumentError(
            f"events[{index}].body", f"of event {event_id!r} {too_deep_problem()}"
        )
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


def is_json_type(content_type: str) -> bool:
    """Whether a content type is ``application/json`` (parameters and letter case aside)."""
    return content_type.split(";", 1)[0].strip().lower() == JSON


def check_json_snapshot(data: bytes) -> None:
    """Raise InvalidArgumentError unless ``data`` is strict JSON nested at most
    :data:`MAX_JSON_DEPTH` deep: the check of a snapshot labelled ``application/json``.

    Any JSON value is accepted at the top (a snapshot need not be an object);
    empty data is not JSON and is refused.
    """
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError as error:
        if json_too_deep(data):
            raise InvalidArgumentError("data", too_deep_problem()) from None
        raise InvalidArgumentError(
            "data", f"is labelled application/json but is not strict JSON: {error}"
        ) from None
    if json_too_deep(data):
        raise InvalidArgumentError("data", too_deep_problem())
