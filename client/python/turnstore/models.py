"""The data types of the two store contracts, with their JSON forms.

These mirror the Rust crates' types (see ``docs/contract.md``):
:class:`AgentEventEnvelope` (flat JSON: the event's fields beside the
envelope's), :class:`StoredTurnEvents`, and :class:`ConversationSnapshot`.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from turnstore import _json
from turnstore.errors import EventFormatError, SnapshotFormatError

ENVELOPE_KEYS: Final = ("event_id", "sequence", "timestamp")
_MAX_U64: Final = (1 << 64) - 1


# RFC 3339 date-time (the Rust crate's chrono::DateTime<Utc> writes this form).
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def is_rfc3339(text: str) -> bool:
    """Whether ``text`` is an RFC 3339 date-time, as an envelope's timestamp must be."""
    return _RFC3339.fullmatch(text) is not None


def _now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def rfc3339(moment: datetime) -> str:
    """An aware ``datetime`` as RFC 3339 in UTC with ``Z``, as the Rust side writes it.

    Raises EventFormatError for a naive ``datetime`` (its zone is unknown).
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise EventFormatError("timestamp: a naive datetime has no time zone; pass an aware one")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, init=False)
class AgentEventEnvelope:
    """One agent event with its envelope header.

    ``event`` is the tagged event as a dict whose ``"type"`` key names its
    kind (``"text_delta"``, ...); its other keys are the event's fields.
    ``sequence`` is the agent's own counter and is not unique.

    ``event_id`` may be given as a ``uuid.UUID`` and ``timestamp`` as an
    aware ``datetime`` (stored as RFC 3339 in UTC, ``...Z``); both are kept
    as strings. Construction raises :class:`~turnstore.errors.EventFormatError`,
    naming the field, when ``event_id`` is empty or not a string/UUID, when
    ``timestamp`` is naive or not RFC 3339, when ``sequence`` is not a u64,
    when ``event`` has no non-empty string ``"type"``, or when ``event`` uses
    an envelope key (which the flat JSON form could not tell apart). Values
    inside ``event`` are checked when it is encoded (``to_json``, or an
    append): strict JSON only.
    """

    event_id: str
    sequence: int
    timestamp: str
    event: dict[str, Any]

    def __init__(
        self,
        event_id: str | uuid.UUID,
        sequence: int,
        timestamp: str | datetime,
        event: dict[str, Any],
    ) -> None:
        if isinstance(event_id, uuid.UUID):
            event_id = str(event_id)
        elif not isinstance(event_id, str) or not event_id:
            raise EventFormatError(
                f"event_id: must be a non-empty string or a uuid.UUID, not {event_id!r}"
            )
        if isinstance(timestamp, datetime):
            timestamp = rfc3339(timestamp)
        elif not isinstance(timestamp, str) or not _RFC3339.fullmatch(timestamp):
            raise EventFormatError(
                f"timestamp: must be an RFC 3339 date-time or an aware datetime, not {timestamp!r}"
            )
        if (
            not isinstance(sequence, int)
            or isinstance(sequence, bool)
            or not 0 <= sequence <= _MAX_U64
        ):
            raise EventFormatError(
                f"sequence: must be an integer from 0 to 2**64-1, not {sequence!r}"
            )
        event_type = event.get("type") if isinstance(event, dict) else None
        if not isinstance(event_type, str) or not event_type:
            raise EventFormatError('event: must be a dict with a non-empty string "type"')
        clashing = [key for key in ENVELOPE_KEYS if key in event]
        if clashing:
            raise EventFormatError(f"event: must not hold envelope keys {clashing}")
        set_field = object.__setattr__
        set_field(self, "event_id", event_id)
        set_field(self, "sequence", sequence)
        set_field(self, "timestamp", timestamp)
        set_field(self, "event", event)

    @property
    def type(self) -> str:
        """The event's kind, its ``"type"`` key."""
        return str(self.event["type"])

    @classmethod
    def new(cls, event: dict[str, Any], sequence: int = 0) -> AgentEventEnvelope:
        """An envelope with a fresh UUID v4 and the current UTC time (a copy of ``event``)."""
        return cls(str(uuid.uuid4()), sequence, _now_rfc3339(), dict(event))

    def to_json_dict(self) -> dict[str, Any]:
        """The flat JSON object: envelope keys first, then the event's keys."""
        return {
            "event_id": self.event_id,
            "sequence": self.sequence,
            "timestamp": self.timestamp,
            **self.event,
        }

    def to_json(self) -> str:
        """The flat JSON text of :meth:`to_json_dict`.

        Raises EventFormatError, naming the key path, for a value strict JSON
        cannot carry (NaN, a non-string key, bytes, a datetime, ...).
        """
        try:
            return _json.dumps(self.to_json_dict(), "envelope").decode()
        except _json.NotJsonError as error:
            raise EventFormatError(str(error)) from None

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> AgentEventEnvelope:
        """Parse the flat JSON object; raises EventFormatError when malformed."""
        if not isinstance(data, dict):
            raise EventFormatError("an envelope must be a JSON object")
        missing = [key for key in (*ENVELOPE_KEYS, "type") if key not in data]
        if missing:
            raise EventFormatError(f"envelope is missing {missing}")
        event_id, sequence, timestamp = (data[key] for key in ENVELOPE_KEYS)
        if not isinstance(event_id, str) or not isinstance(timestamp, str):
            raise EventFormatError("event_id and timestamp must be strings")
        event = {key: value for key, value in data.items() if key not in ENVELOPE_KEYS}
        return cls(event_id, sequence, timestamp, event)

    @classmethod
    def from_json(cls, text: str | bytes) -> AgentEventEnvelope:
        """Parse flat JSON text; raises EventFormatError when malformed."""
        try:
            data = _json.loads(text)
        except ValueError as error:
            raise EventFormatError(f"envelope is not valid JSON: {error}") from error
        return cls.from_json_dict(data)


@dataclass(frozen=True)
class StoredTurnEvents:
    """One stored turn: its number, its events in append order, its flag."""

    turn: int
    events: list[AgentEventEnvelope] = field(default_factory=list)
    finished: bool = False


SNAPSHOT_VERSION: Final = 1


@dataclass(frozen=True)
class ConversationSnapshot:
    """A whole conversation: opaque JSON messages and their pinned flags.

    Raises :class:`~turnstore.errors.SnapshotFormatError` unless ``version``
    is 1 and ``messages`` and ``pinned`` have the same length, as the
    original reader does.
    """

    messages: list[Any]
    pinned: list[bool]
    version: int = SNAPSHOT_VERSION

    def __post_init__(self) -> None:
        if self.version != SNAPSHOT_VERSION:
            raise SnapshotFormatError(
                f"unsupported snapshot version {self.version!r} (only {SNAPSHOT_VERSION} is)"
            )
        if not isinstance(self.messages, list) or not isinstance(self.pinned, list):
            raise SnapshotFormatError("messages and pinned must be lists")
        if len(self.messages) != len(self.pinned):
            raise SnapshotFormatError(
                f"messages has {len(self.messages)} items but pinned has {len(self.pinned)}"
            )
        if not all(isinstance(flag, bool) for flag in self.pinned):
            raise SnapshotFormatError("pinned must hold only booleans")

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON object ``{"version": 1, "messages": [...], "pinned": [...]}``."""
        return {"version": self.version, "messages": self.messages, "pinned": self.pinned}

    def to_json(self) -> str:
        """The JSON text of :meth:`to_json_dict`; see :meth:`to_json_bytes`."""
        return self.to_json_bytes().decode()

    def to_json_bytes(self) -> bytes:
        """The UTF-8 JSON of :meth:`to_json_dict`, as stored.

        Raises SnapshotFormatError, naming the key path, for a value strict
        JSON cannot carry (NaN, a non-string key, bytes, a datetime, ...).
        """
        try:
            return _json.dumps(self.to_json_dict(), "snapshot")
        except _json.NotJsonError as error:
            raise SnapshotFormatError(str(error)) from None

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> ConversationSnapshot:
        """Parse and validate the JSON object; raises SnapshotFormatError."""
        if not isinstance(data, dict):
            raise SnapshotFormatError("a snapshot must be a JSON object")
        try:
            return cls(data["messages"], data["pinned"], data["version"])
        except KeyError as error:
            raise SnapshotFormatError(f"snapshot is missing {error.args[0]!r}") from error

    @classmethod
    def from_json(cls, text: str | bytes) -> ConversationSnapshot:
        """Parse and validate JSON text; raises SnapshotFormatError."""
        try:
            data = _json.loads(text)
        except ValueError as error:
            raise SnapshotFormatError(f"snapshot is not valid JSON: {error}") from error
        return cls.from_json_dict(data)
