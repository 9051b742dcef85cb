"""A thread's replay as Server-Sent Events: cursors as event ids, JSON data.

Every event goes out as ``id: <epoch>:<position>`` and ``data:`` its flat JSON
envelope with ``position`` and ``turn``. Markers are named SSE events:
``turn_finished`` and ``caught_up`` carry an id too (``<epoch>:<position>:<finish
sequence>``, the exact cursor after them, so a resume never repeats them),
``thread_cleared`` does not. A cursor the daemon refuses (past the end of
the thread: reason ``cursor_out_of_range``) gets a 200 stream of one
``error`` event (``{"error": REASON, "message": ..., "next_position": N,
"epoch": E}``) and the ``end`` event. A stream that ends by itself sends a last ``end``
event whose id ends in ``:end``; a reconnect presenting such an id is answered
204 No Content, which makes ``EventSource`` stop for good instead of
reconnecting forever. Epoch ``0`` stands for "no thread seen yet". A stream
whose browser session expired or was revoked ends with ``session_ended``
(no id), within one heartbeat.

A body that is not strict JSON (or not a JSON object, or of another content
type) never reaches the browser as broken JSON: the event keeps its header
fields and gets ``body_error`` (why) and ``raw_body`` (the bytes as UTF-8 text,
invalid sequences replaced) instead of its body's keys. So does a body nested
deeper than :data:`turnstore.server.api.bodies.MAX_JSON_DEPTH` (refused at write
time, but an older version stored up to 1,024 levels): every reader can
parse every event, and the events around it are delivered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Final

import orjson

from turnstore.server.api.bodies import json_too_deep, too_deep_problem
from turnstore.server.replay.replaying import MAX_POSITION, ReplayBatch
from turnstore.server.storage import records
from turnstore.server.storage.errors import CursorOutOfRangeError, InvalidArgumentError
from turnstore.v1 import turnstore_pb2 as pb

JSON_TYPES: Final = ("", "application/json")
END: Final = "end"
# POSITION, EPOCH:POSITION or EPOCH:POSITION:SEQ, then optionally :end.
_CURSOR: Final = re.compile(r"(-1|\d{1,20})(?::(-1|\d{1,20}))?(?::(\d{1,20}))?(:end)?", re.ASCII)


@dataclass(frozen=True)
class StreamCursor:
    """Where an event stream resumes: after ``after_position`` of thread ``epoch``.

    ``finish_seq`` None resumes at the first finish at or after the position
    (finish markers right after it may come again); ``ended`` marks the id
    of a stream's ``end`` event.
    """

    epoch: int | None = None
    after_position: int = -1
    finish_seq: int | None = None
    ended: bool = False

    @classmethod
    def parse(cls, text: str, field: str) -> StreamCursor:
        """Parse ``P``, ``E:P``, ``E:P:S``, each optionally followed by ``:end``.

        Raises InvalidArgumentError naming ``field`` for anything else.
        """
        match = _CURSOR.fullmatch(text.strip())
        numbers = [int(g) for g in match.groups()[:3] if g is not None] if match else []
        if not numbers or any(n > MAX_POSITION for n in numbers):
            raise InvalidArgumentError(
                field,
                f"{text[:80]!r} is not a stream position (POSITION or EPOCH:POSITION[:SEQ])",
            )
        assert match is not None
        ended = match.group(4) is not None
        if len(numbers) == 1:
            return cls(None, numbers[0], None, ended)
        if numbers[0] < 0 or (len(numbers) == 3 and numbers[2] < 0):
            raise InvalidArgumentError(field, f"{text[:80]!r} has a negative epoch or sequence")
        epoch, after, *rest = numbers
        return cls(epoch or None, after, rest[0] if rest else None, ended)

    def text(self) -> str:
        """The cursor as an event id (the inverse of :meth:`parse`)."""
        out = f"{self.epoch or 0}:{self.after_position}"
        if self.finish_seq is not None:
            out += f":{self.finish_seq}"
        return out + (":" + END if self.ended else "")


def event_json(event: pb.StoredEvent) -> bytes:
    """The flat JSON of a stored event: header fields, then its body's keys.

    Header fields win over body keys of the same name. A body that is not a
    strict JSON object, or nested deeper than the limit, yields
    ``body_error`` and ``raw_body`` instead.
    """
    envelope = event.envelope
    record: dict[str, Any] = {
        "position": event.position,
        "turn": event.turn,
        "event_id": envelope.event_id,
        "sequence": envelope.sequence,
        "timestamp": envelope.timestamp,
        "type": envelope.type,
    }
    content_type = envelope.content_type.split(";", 1)[0].strip().lower()
    problem: str
    if content_type not in JSON_TYPES:
        problem = f"content type {envelope.content_type!r} is not JSON"
    elif json_too_deep(envelope.body):
        # Stored by an older version: refused today, and past orjson's
        # writing limit or the readers' parsers.
        problem = too_deep_problem()
    else:
        try:
            body = orjson.loads(envelope.body) if envelope.body else {}
        except orjson.JSONDecodeError as error:
            problem = f"not strict JSON: {error}"
        else:
            if type(body) is dict:
                for key, value in body.items():
                    record.setdefault(key, value)
                return orjson.dumps(record)
            problem = "not a JSON object"
    record["body_error"] = problem
    record["raw_body"] = envelope.body.decode("utf-8", "replace")
    return orjson.dumps(record)


def stored_event_json(value: bytes) -> bytes:
    """:func:`event_json` of a stored record (framed ``StoredEvent`` bytes)."""
    return event_json(pb.StoredEvent.FromString(records.unframe(value)))


def _sse(name: str | None, cursor: StreamCursor | None, data: bytes) -> bytes:
    head = b"event: " + name.encode() + b"\n" if name else b""
    if cursor is not None:
        head += b"id: " + cursor.text().encode() + b"\n"
    return head + b"data: " + data + b"\n\n"


def encode_batch(batch: ReplayBatch, cursor: StreamCursor) -> tuple[bytes, StreamCursor]:
    """The SSE text of one replay batch, and the cursor after it.

    Runs on the read pool: it decodes and re-encodes every event's JSON.
    """
    out: list[bytes] = []
    epoch = batch.epoch
    if batch.cleared:
        body = orjson.dumps({"epoch": epoch or 0, "next_position": batch.next_position})
        return _sse("thread_cleared", None, body), cursor
    for value in batch.events:
        event = pb.StoredEvent.FromString(records.unframe(value))
        cursor = StreamCursor(epoch, event.position)
        out.append(_sse(None, cursor, event_json(event)))
    for finish in batch.finishes:
        cursor = StreamCursor(epoch, finish.after_position, finish.resume_finish_seq)
        body = orjson.dumps(
            {
                "turn": finish.turn,
                "event_count": finish.event_count,
                "last_position": finish.last_position,
            }
        )
        out.append(_sse("turn_finished", cursor, body))
    if batch.caught_up:
        body = orjson.dumps({"epoch": epoch or 0, "next_position": batch.next_position})
        marker: StreamCursor | None = None
        if epoch is not None:
            cursor = marker = StreamCursor(epoch, batch.next_position - 1, batch.next_finish_seq)
        out.append(_sse("caught_up", marker, body))
    return b"".join(out), cursor


def cursor_error_event(error: CursorOutOfRangeError, epoch: int | None) -> bytes:
    """The ``error`` event of a refused cursor: the reason, why, and where the thread ends."""
    body = {
        "error": error.reason,
        "message": str(error),
        "next_position": error.next_position,
        "epoch": epoch or 0,
    }
    return _sse("error", None, orjson.dumps(body))


def end_event(cursor: StreamCursor, reason: str) -> bytes:
    """The last event of a stream that ended by itself; its id ends in ``:end``."""
    return _sse(END, replace(cursor, ended=True), orjson.dumps({"reason": reason}))


HEARTBEAT: Final = b": heartbeat\n\n"
# The last event of a stream whose browser session expired or was revoked:
# no id, so a reader that gets a new session resumes from its last event.
SESSION_ENDED: Final = b'event: session_ended\ndata: {"reason":"session_ended"}\n\n'
