"""Encoding of event records as ``StoredEvent`` protobuf wire bytes.

The engine stores each event as the wire form of the proto message
``StoredEvent`` (fields 1 position, 2 turn, 3 stored_at_unix_nanos, 4 the
envelope as sent), written by hand here so that the engine needs neither gRPC
nor the generated code. Field numbers must match ``proto/turnstore/v1``; a
test decodes these bytes with the generated class to keep both in step.
"""

from __future__ import annotations


def _varint(value: int) -> bytes:
    """Encode a non-negative integer as a protobuf base-128 varint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_stored_event(position: int, turn: int, stored_at_ns: int, envelope: bytes) -> bytes:
    """Build the record of one event.

    ``envelope`` is an already encoded ``EventEnvelope``. Zero-valued integer
    fields are omitted, as protobuf does. ``stored_at_ns`` must not be negative.
    """
    parts = []
    if position:
        parts.append(b"\x08" + _varint(position))
    if turn:
        parts.append(b"\x10" + _varint(turn))
    if stored_at_ns:
        parts.append(b"\x18" + _varint(stored_at_ns))
    parts.append(b"\x22" + _varint(len(envelope)))
    parts.append(envelope)
    return b"".join(parts)
