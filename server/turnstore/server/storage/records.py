"""Event records, stored as ready-to-send protobuf wire bytes.

The engine stores each event as field 1 (``repeated StoredEvent events = 1``)
of the stream responses ``ReadEventsResponse`` and ``ReplayResponse``: a tag
byte, the length, and a ``StoredEvent`` message (fields 1 position, 2 turn,
3 stored_at_unix_nanos, 4 the envelope as sent). A read then answers with the
stored values joined, without decoding or encoding an event. The encoding is
written by hand here so that the engine needs neither gRPC nor the generated
code; field numbers must match ``proto/turnstore/v1`` (a test decodes these
bytes with the generated classes to keep both in step).
"""

from __future__ import annotations


def varint(value: int) -> bytes:
    """Encode a non-negative integer as a protobuf base-128 varint."""
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value < 0x200000:
        return bytes(((value & 0x7F) | 0x80, ((value >> 7) & 0x7F) | 0x80, value >> 14))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_batch(
    first_position: int, turn: int, stored_at_ns: int, envelopes: list[bytes]
) -> list[bytes]:
    """Stored values of events at consecutive positions from ``first_position``.

    Each ``envelope`` is an already encoded ``EventEnvelope``; each value is
    a framed ``StoredEvent``. Zero-valued integer fields are omitted, as
    protobuf does; the fields common to the batch are encoded once.
    ``stored_at_ns`` must not be negative.
    """
    common = b""
    if turn:
        common += b"\x10" + varint(turn)
    if stored_at_ns:
        common += b"\x18" + varint(stored_at_ns)
    out = []
    position = first_position
    for envelope in envelopes:
        head = (b"\x08" + varint(position) if position else b"") + common
        size = len(envelope)
        body_length = varint(size)
        message_length = len(head) + 1 + len(body_length) + size
        out.append(
            b"".join((b"\x0a", varint(message_length), head, b"\x22", body_length, envelope))
        )
        position += 1
    return out


def unframe(value: bytes) -> bytes:
    """The ``StoredEvent`` message inside a stored value."""
    index = 1
    while value[index] & 0x80:
        index += 1
    return value[index + 1 :]


def retag(value: bytes, field_number: int) -> bytes:
    """The stored value framed as another length-delimited field number (< 16)."""
    return bytes(((field_number << 3) | 2,)) + value[1:]
