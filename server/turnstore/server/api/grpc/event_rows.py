"""Events as JSON rows (``EVENT_ENCODING_JSON_ROWS``): one parse per message for readers.

The StoredEvent form costs a reader a protobuf field access per header
field and a JSON parse per body: about 4.5 µs an event in the Python
client, where the whole message parses in 0.3 µs. As one JSON array of
rows, ``[position, turn, stored_at_unix_nanos, event_id, sequence,
timestamp, type, body]``, a reader parses a message once (about 1.4 µs an
event, envelopes built). The daemon pays for it here instead, about
2.4 µs an event (one protobuf parse of the message, the header fields read
once, the bodies spliced in as they are stored): the daemon is one process
and its readers are many, but a read's two ends run on separate cores, so a
read streams at the slower end's pace.

Stored bodies are strict JSON objects (the write path refuses anything
else, ``docs/guarantees.md``), so they go into the array unparsed
(:class:`orjson.Fragment`). A reader that cannot parse a message anyway
reads it again in the StoredEvent form, where a bad body fails alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import orjson

from turnstore.v1 import turnstore_pb2 as pb

_EMPTY_BODY: Final = orjson.Fragment(b"{}")
# Up to this many events a message is encoded on the event loop: a replay
# message of a live follower holds one or a few events. Measured (median,
# this machine): 8 µs for one event, 26 µs for 16, where a hop to the thread
# pool and back costs 60-90 µs of follow latency. Larger messages go to the
# pool, so the loop never spends more than that on one.
ENCODE_ON_LOOP_EVENTS: Final = 16


def json_rows(values: Sequence[bytes]) -> bytes:
    """The JSON rows of stored values (each a StoredEvent framed as field 1).

    An empty sequence gives ``b"[]"``.
    """
    events = pb.ReadEventsResponse.FromString(b"".join(values)).events
    fragment = orjson.Fragment
    rows: list[list[object]] = []
    append = rows.append
    for event in events:
        envelope = event.envelope
        body = envelope.body
        append(
            [
                event.position,
                event.turn,
                event.stored_at_unix_nanos,
                envelope.event_id,
                envelope.sequence,
                envelope.timestamp,
                envelope.type,
                fragment(body) if body else _EMPTY_BODY,
            ]
        )
    return orjson.dumps(rows)


def read_events_message(values: Sequence[bytes]) -> bytes:
    """A serialized ReadEventsResponse carrying ``values`` as JSON rows."""
    message: bytes = pb.ReadEventsResponse(events_json=json_rows(values)).SerializeToString()
    return message
