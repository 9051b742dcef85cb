"""The data types and their JSON forms, as docs/contract.md defines them."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from turnstore import (
    AgentEventEnvelope,
    ConversationSnapshot,
    EventFormatError,
    SnapshotFormatError,
)
from turnstore._convert import fill_envelope
from turnstore.v1 import turnstore_pb2 as pb

FLAT = (
    '{"event_id":"7f0c8a1e-0000-4000-8000-000000000001","sequence":3,'
    '"timestamp":"2026-01-01T00:00:00Z","type":"text_delta","message_id":"m1","delta":"Hel"}'
)


def test_envelope_parses_the_flat_json_form() -> None:
    envelope = AgentEventEnvelope.from_json(FLAT)
    assert envelope.event_id == "7f0c8a1e-0000-4000-8000-000000000001"
    assert envelope.sequence == 3
    assert envelope.timestamp == "2026-01-01T00:00:00Z"
    assert envelope.event == {"type": "text_delta", "message_id": "m1", "delta": "Hel"}
    assert envelope.type == "text_delta"


def test_envelope_writes_flat_json_without_an_event_key() -> None:
    envelope = AgentEventEnvelope.from_json(FLAT)
    assert envelope.to_json() == FLAT
    assert "event" not in json.loads(envelope.to_json())


def test_new_envelope_gets_a_uuid_and_an_rfc3339_utc_time() -> None:
    envelope = AgentEventEnvelope.new({"type": "done"}, sequence=9)
    assert uuid.UUID(envelope.event_id).version == 4
    assert envelope.timestamp.endswith("Z")
    assert envelope.sequence == 9


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"sequence":1,"timestamp":"2026-01-01T00:00:00Z","type":"x"}',
        '{"event_id":"e","sequence":1,"timestamp":"2026-01-01T00:00:00Z"}',
        '{"event_id":"e","sequence":-1,"timestamp":"2026-01-01T00:00:00Z","type":"x"}',
        '{"event_id":"e","sequence":"1","timestamp":"2026-01-01T00:00:00Z","type":"x"}',
        '{"event_id":"e","sequence":1,"timestamp":"2026-01-01T00:00:00Z","type":""}',
        '{"event_id":1,"sequence":1,"timestamp":"2026-01-01T00:00:00Z","type":"x"}',
    ],
)
def test_malformed_envelopes_are_rejected(text: str) -> None:
    with pytest.raises(EventFormatError):
        AgentEventEnvelope.from_json(text)


def test_event_may_not_shadow_envelope_keys() -> None:
    with pytest.raises(EventFormatError, match="envelope keys"):
        AgentEventEnvelope("e", 0, "2026-01-01T00:00:00Z", {"type": "x", "sequence": 1})


def test_envelope_takes_a_uuid_and_an_aware_datetime() -> None:
    moment = datetime(2026, 12, 1, 23, 0, 5, 120000, tzinfo=timezone(timedelta(hours=2)))
    event_id = uuid.uuid4()
    envelope = AgentEventEnvelope(event_id, 1, moment, {"type": "x"})
    assert envelope.event_id == str(event_id)
    assert envelope.timestamp == "2026-12-01T21:00:05.120000Z"
    assert envelope == AgentEventEnvelope(str(event_id), 1, envelope.timestamp, {"type": "x"})


@pytest.mark.parametrize(
    ("event_id", "timestamp", "sequence", "field"),
    [
        ("", "2026-01-01T00:00:00Z", 0, "event_id"),
        (7, "2026-01-01T00:00:00Z", 0, "event_id"),
        ("e", datetime(2026, 1, 1), 0, "timestamp"),
        ("e", "yesterday", 0, "timestamp"),
        ("e", 1767225600, 0, "timestamp"),
        ("e", "2026-01-01T00:00:00Z", True, "sequence"),
        ("e", "2026-01-01T00:00:00Z", 2**64, "sequence"),
    ],
)
def test_each_bad_header_field_is_named(
    event_id: object, timestamp: object, sequence: object, field: str
) -> None:
    with pytest.raises(EventFormatError, match=f"^{field}: "):
        AgentEventEnvelope(event_id, sequence, timestamp, {"type": "x"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("event", "path"),
    [
        ({"type": "metric", "v": float("nan")}, "event.v"),
        ({"type": "metric", "v": [1.0, float("inf")]}, r"event.v\[1\]"),
        ({"type": "x", "args": {1: "a"}}, "event.args: key 1 is a int"),
        ({"type": "x", "data": b"raw"}, "event.data: a bytes"),
        ({"type": "x", "at": datetime.now(UTC)}, "event.at: a datetime"),
        ({"type": "x", "tags": {"a"}}, "event.tags: a set"),
        ({"type": "x", "n": 1 << 64}, "event.n: integer 18446744073709551616 is beyond 64 bits"),
        ({"type": "x", "deep": [{"n": object()}]}, r"event.deep\[0\].n: a object"),
    ],
)
def test_values_json_cannot_carry_are_refused_with_their_path(
    event: dict[str, object], path: str
) -> None:
    envelope = AgentEventEnvelope.new(event)
    with pytest.raises(EventFormatError, match=path):
        fill_envelope(pb.EventEnvelope(), envelope)
    with pytest.raises(EventFormatError, match=path.replace("event.", "envelope.")):
        envelope.to_json()


def test_strict_json_allows_what_every_language_reads() -> None:
    event = {"type": "x", "n": None, "f": 1.5, "i": -(2**63), "s": "é\u2028", "l": (1, [True])}
    message = fill_envelope(pb.EventEnvelope(), AgentEventEnvelope.new(event))
    assert json.loads(message.body) == {
        "n": None,
        "f": 1.5,
        "i": -(2**63),
        "s": "é\u2028",
        "l": [1, [True]],
    }


def test_snapshot_values_json_cannot_carry_are_refused() -> None:
    snapshot = ConversationSnapshot([{"role": "user", "score": float("nan")}], [False])
    with pytest.raises(SnapshotFormatError, match=r"snapshot.messages\[0\].score"):
        snapshot.to_json_bytes()


def test_snapshot_round_trips_its_json() -> None:
    text = '{"version":1,"messages":[{"role":"user","content":"hi"},null],"pinned":[true,false]}'
    snapshot = ConversationSnapshot.from_json(text)
    assert snapshot.messages == [{"role": "user", "content": "hi"}, None]
    assert snapshot.pinned == [True, False]
    assert snapshot.to_json() == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"version":2,"messages":[],"pinned":[]}', "version"),
        ('{"version":1,"messages":[1],"pinned":[]}', "pinned has 0"),
        ('{"version":1,"messages":[]}', "missing"),
        ('{"version":1,"messages":[1],"pinned":[1]}', "booleans"),
        ("[1]", "object"),
        ("{", "JSON"),
    ],
)
def test_invalid_snapshots_are_rejected(text: str, problem: str) -> None:
    with pytest.raises(SnapshotFormatError, match=problem):
        ConversationSnapshot.from_json(text)


def test_snapshot_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        ConversationSnapshot([1, 2], [True])
