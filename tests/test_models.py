"""The data types and their JSON forms, as CONTRACT.md defines them."""

from __future__ import annotations

import json
import uuid

import pytest

from turnstore import (
    AgentEventEnvelope,
    ConversationSnapshot,
    EventFormatError,
    SnapshotFormatError,
)

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
        '{"sequence":1,"timestamp":"t","type":"x"}',
        '{"event_id":"e","sequence":1,"timestamp":"t"}',
        '{"event_id":"e","sequence":-1,"timestamp":"t","type":"x"}',
        '{"event_id":"e","sequence":"1","timestamp":"t","type":"x"}',
        '{"event_id":"e","sequence":1,"timestamp":"t","type":""}',
        '{"event_id":1,"sequence":1,"timestamp":"t","type":"x"}',
    ],
)
def test_malformed_envelopes_are_rejected(text: str) -> None:
    with pytest.raises(EventFormatError):
        AgentEventEnvelope.from_json(text)


def test_event_may_not_shadow_envelope_keys() -> None:
    with pytest.raises(EventFormatError, match="envelope keys"):
        AgentEventEnvelope("e", 0, "t", {"type": "x", "sequence": 1})


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
