"""The export format: threads and snapshots as JSON lines.

``turnstore export`` writes, and ``turnstore import`` reads, one JSON object
per line (UTF-8). Every object has a ``kind``:

``header`` (first line)
    ``{"kind": "header", "format": "turnstore-export", "version": 1,
    "exported_at": "<RFC 3339>"}``. A reader refuses another ``format`` or a
    newer ``version``; a file without a header is read as version 1.
``event``
    ``{"kind": "event", "thread_id": T, "turn": N, "position": P, "event":
    {...}}``: one stored event, ``event`` being the flat envelope JSON of
    :meth:`turnstore.AgentEventEnvelope.to_json_dict` (``event_id``,
    ``sequence``, ``timestamp``, ``type`` and the event's fields). An event
    whose body is not a JSON object (another ``content_type``, or fields that
    the flat form cannot hold) carries ``"envelope": {"event_id", "sequence",
    "timestamp", "type", "content_type", "body_base64"}`` instead of
    ``event``. ``position`` is the position in the exported thread, for
    information: an import appends and the target assigns positions.
``turn_finished``
    ``{"kind": "turn_finished", "thread_id": T, "turn": N}``: the turn's
    close barrier, placed among the thread's events where it was committed.
``snapshot``
    ``{"kind": "snapshot", "key": K, "version": V, "content_type": C,
    "data_base64": B}``: the latest snapshot of a conversation key (``version``
    is its version in the exported daemon, for information).

Lines of one thread come together, in position order, with the finish
markers in place; snapshot lines follow all threads. A reader refuses, naming
the line, one longer than :data:`MAX_LINE_BYTES` (before reading it whole)
and one nested deeper than the daemon accepts (:data:`MAX_LINE_DEPTH`). This module only
encodes and decodes lines; :class:`turnstore.admin.TurnstoreAdmin` runs exports
and imports.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO, Final

from turnstore import _json
from turnstore._convert import JSON, fill_envelope
from turnstore.errors import EventFormatError, TurnstoreError
from turnstore.models import ENVELOPE_KEYS, AgentEventEnvelope, is_rfc3339
from turnstore.v1 import turnstore_pb2 as pb

FORMAT: Final = "turnstore-export"
VERSION: Final = 1

_MAX_U64: Final = (1 << 64) - 1
# The longest line read: a snapshot of the default limit (32 MiB) is about
# 43 MiB of base64, and an event of 1 MiB at most 6 MiB of escaped JSON.
MAX_LINE_BYTES: Final = 64 * 1024 * 1024
# An event line holds the flat event (its body's level) inside the line's object.
MAX_LINE_DEPTH: Final = _json.MAX_JSON_DEPTH + 1
_READ_CHUNK: Final = 1 << 20


def _encode(record: dict[str, Any]) -> str:
    return _json.dumps(record, "line").decode()


class TransferError(TurnstoreError, ValueError):
    """An export line is malformed, or an import failed at a line.

    ``line`` is the 1-based line number (None when not known); an append of
    several lines' events that failed names its first and ``last_line``.
    """

    def __init__(self, message: str, line: int | None = None, last_line: int | None = None) -> None:
        if line is not None and last_line is not None and last_line != line:
            message = f"lines {line}-{last_line}: {message}"
        elif line is not None:
            message = f"line {line}: {message}"
        super().__init__(message)
        self.line = line
        self.last_line = last_line if last_line is not None else line


@dataclass(frozen=True)
class EventLine:
    """An ``event`` line: the envelope to append, where it was."""

    thread_id: str
    turn: int
    position: int
    envelope: pb.EventEnvelope


@dataclass(frozen=True)
class FinishLine:
    """A ``turn_finished`` line."""

    thread_id: str
    turn: int


@dataclass(frozen=True)
class SnapshotLine:
    """A ``snapshot`` line."""

    key: str
    version: int
    content_type: str
    data: bytes


@dataclass(frozen=True)
class HeaderLine:
    """The ``header`` line."""

    version: int


Line = EventLine | FinishLine | SnapshotLine | HeaderLine


def header_line() -> str:
    """The first line of an export."""
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return _encode({"kind": "header", "format": FORMAT, "version": VERSION, "exported_at": now})


def _flat_event(envelope: pb.EventEnvelope) -> dict[str, Any] | None:
    """The flat JSON of an envelope, or None when the flat form would lose something."""
    if envelope.content_type not in ("", JSON):
        return None
    if _json.too_deep(envelope.body):
        return None  # stored by an older daemon: kept exactly, in base64
    try:
        body = _json.loads(envelope.body) if envelope.body else {}
    except ValueError:
        return None
    if not isinstance(body, dict) or any(key in body for key in (*ENVELOPE_KEYS, "type")):
        return None
    if not envelope.event_id or not is_rfc3339(envelope.timestamp):
        return None  # a raw writer's header that AgentEventEnvelope would refuse
    flat: dict[str, Any] = {
        "event_id": envelope.event_id,
        "sequence": envelope.sequence,
        "timestamp": envelope.timestamp,
        "type": envelope.type,
    }
    flat.update(body)
    return flat


def event_line(thread_id: str, event: pb.StoredEvent) -> str:
    """An ``event`` line for a stored event."""
    record: dict[str, Any] = {
        "kind": "event",
        "thread_id": thread_id,
        "turn": event.turn,
        "position": event.position,
    }
    envelope = event.envelope
    flat = _flat_event(envelope)
    if flat is not None:
        record["event"] = flat
    else:
        record["envelope"] = {
            "event_id": envelope.event_id,
            "sequence": envelope.sequence,
            "timestamp": envelope.timestamp,
            "type": envelope.type,
            "content_type": envelope.content_type or JSON,
            "body_base64": base64.b64encode(envelope.body).decode("ascii"),
        }
    return _encode(record)


def finish_line(thread_id: str, turn: int) -> str:
    """A ``turn_finished`` line."""
    return _encode({"kind": "turn_finished", "thread_id": thread_id, "turn": turn})


def snapshot_line(key: str, version: int, content_type: str, data: bytes) -> str:
    """A ``snapshot`` line."""
    return _encode(
        {
            "kind": "snapshot",
            "key": key,
            "version": version,
            "content_type": content_type,
            "data_base64": base64.b64encode(data).decode("ascii"),
        }
    )


def _text(record: dict[str, Any], name: str, *, empty: bool = False) -> str:
    value = record.get(name)
    if not isinstance(value, str) or (not value and not empty):
        raise TransferError(f"{name!r} must be a {'' if empty else 'non-empty '}string")
    return value


def _u64(record: dict[str, Any], name: str) -> int:
    value = record.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_U64:
        raise TransferError(f"{name!r} must be an integer between 0 and 2**64-1")
    return value


def _base64(record: dict[str, Any], name: str) -> bytes:
    try:
        return base64.b64decode(_text(record, name, empty=True), validate=True)
    except binascii.Error as error:
        raise TransferError(f"{name!r} is not base64: {error}") from error


def _envelope(record: dict[str, Any]) -> pb.EventEnvelope:
    if "event" in record:
        try:
            envelope = AgentEventEnvelope.from_json_dict(record["event"])
            return fill_envelope(pb.EventEnvelope(), envelope)
        except EventFormatError as error:
            raise TransferError(f"'event' is not a flat envelope: {error}") from error
    raw = record.get("envelope")
    if not isinstance(raw, dict):
        raise TransferError("an event line needs 'event' or 'envelope'")
    return pb.EventEnvelope(
        event_id=_text(raw, "event_id"),
        sequence=_u64(raw, "sequence"),
        timestamp=_text(raw, "timestamp", empty=True),
        type=_text(raw, "type"),
        content_type=_text(raw, "content_type", empty=True),
        body=_base64(raw, "body_base64"),
    )


# What one read of a line takes at most (read_lines).
_READ_PIECE_BYTES: Final = 1 << 20


def read_lines(source: BinaryIO, max_bytes: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """The lines of ``source`` (each with its newline, if any), in bounded memory.

    Raises TransferError naming the line once a line grows past
    ``max_bytes``, having read at most ``max_bytes`` + 1 MiB of it: a
    hostile or corrupt file never makes the reader hold more. A line is read
    in 1 MiB pieces into one growing buffer (one ``readline(max_bytes)``
    call would collect its pieces and then join them: twice the line, and
    more where the C heap fragments).
    """
    number = 0
    while True:
        number += 1
        line = source.readline(_READ_PIECE_BYTES)
        if not line:
            return
        if not line.endswith(b"\n") and len(line) == _READ_PIECE_BYTES:
            pieces = bytearray(line)
            while not pieces.endswith(b"\n") and len(pieces) <= max_bytes:
                piece = source.readline(_READ_PIECE_BYTES)
                if not piece:
                    break
                pieces += piece
            line = bytes(pieces)
            del pieces
        if len(line) > max_bytes:
            raise TransferError(
                f"is longer than {max_bytes} bytes, the most an import reads as one line",
                number,
            )
        yield line


def parse_line(text: str | bytes) -> Line:
    """Decode one line; raises TransferError (without a line number) when malformed.

    Refused without decoding it further: a line nested deeper than
    :data:`MAX_LINE_DEPTH` (an event body deeper than the daemon accepts).
    """
    data = text if isinstance(text, bytes) else None
    if data is None:
        assert isinstance(text, str)
        # Most lines have few brackets: encoded (a copy) only when they might be too deep.
        if text.count("{") + text.count("[") > MAX_LINE_DEPTH:
            data = text.encode("utf-8", "surrogatepass")
    if data is not None and _json.too_deep(data, MAX_LINE_DEPTH):
        raise TransferError(
            f"nests arrays and objects deeper than {MAX_LINE_DEPTH} levels (an event body "
            f"deeper than the daemon's limit of {_json.MAX_JSON_DEPTH})"
        )
    try:
        record = _json.loads(text)
    except ValueError as error:
        raise TransferError(f"not JSON: {error}") from error
    if not isinstance(record, dict):
        raise TransferError("not a JSON object")
    kind = record.get("kind")
    if kind == "event":
        return EventLine(
            _text(record, "thread_id"),
            _u64(record, "turn"),
            _u64(record, "position"),
            _envelope(record),
        )
    if kind == "turn_finished":
        return FinishLine(_text(record, "thread_id"), _u64(record, "turn"))
    if kind == "snapshot":
        return SnapshotLine(
            _text(record, "key"),
            _u64(record, "version"),
            _text(record, "content_type", empty=True),
            _base64(record, "data_base64"),
        )
    if kind == "header":
        if record.get("format") != FORMAT:
            raise TransferError(f"not a {FORMAT} file (format {record.get('format')!r})")
        version = _u64(record, "version")
        if version > VERSION:
            raise TransferError(
                f"export format version {version} is newer than this turnstore ({VERSION})"
            )
        return HeaderLine(version)
    raise TransferError(f"unknown kind {kind!r}")
