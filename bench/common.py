"""What every load generator shares: payloads, latency statistics, timing.

Every event, Redis entry and LMDB value in the benchmark is the same size
(:data:`EVENT_BYTES`): for turnstore, the encoded ``EventEnvelope`` of an
event whose JSON body is padded to reach it; for Redis and LMDB, those very
bytes as the entry or value.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final

from turnstore import AgentEventEnvelope
from turnstore.v1 import turnstore_pb2 as pb

# A JSON-compatible result, as passed between processes.
Result = dict[str, Any]

EVENT_BYTES: Final = 256
EVENT_TYPE: Final = "text_delta"
JSON_CONTENT_TYPE: Final = "application/json"
TIMESTAMP: Final = "2025-01-01T00:00:00.000000Z"
EVENT_ID_CHARS: Final = 36  # as long as a UUID, what the reference agent uses


def _body(delta: str) -> bytes:
    return json.dumps(
        {"message_id": "m1", "delta": delta}, ensure_ascii=False, separators=(",", ":")
    ).encode()


def _wire(event_id: str, sequence: int, delta: str) -> pb.EventEnvelope:
    """The envelope as the client puts it on the wire (see ``turnstore._convert``)."""
    return pb.EventEnvelope(
        event_id=event_id,
        sequence=sequence,
        timestamp=TIMESTAMP,
        type=EVENT_TYPE,
        body=_body(delta),
        content_type=JSON_CONTENT_TYPE,
    )


class EnvelopeFactory:
    """Makes unique events whose encoded envelope is :data:`EVENT_BYTES` long.

    Event ids are ``EVENT_ID_CHARS`` characters: a random run tag, the
    ``stream`` number and a counter, so no two events of a run share an id
    (the daemon stores an event id once per thread). Sequences stay in
    1..100 so their varint is always one byte.
    """

    def __init__(self, stream: int = 0, size: int = EVENT_BYTES) -> None:
        self._prefix = f"{uuid.uuid4().hex[:12]}-{stream:05d}-"
        self._digits = EVENT_ID_CHARS - len(self._prefix)
        self._counter = 0
        base = _wire(self._event_id(0), 1, "").ByteSize()
        pad = size - base
        # The body is a length-prefixed field: growing it past 127 bytes
        # adds a byte to its length prefix.
        delta = "x" * max(pad, 0)
        while _wire(self._event_id(0), 1, delta).ByteSize() > size and delta:
            delta = delta[:-1]
        self._event: dict[str, Any] = {"type": EVENT_TYPE, "message_id": "m1", "delta": delta}
        self.encoded_bytes = _wire(self._event_id(0), 1, delta).ByteSize()

    def _event_id(self, n: int) -> str:
        return f"{self._prefix}{n:0{self._digits}d}"

    def make(self) -> AgentEventEnvelope:
        """The next event."""
        n = self._counter
        self._counter += 1
        return AgentEventEnvelope(self._event_id(n), 1 + n % 100, TIMESTAMP, self._event)

    def batch(self, count: int) -> list[AgentEventEnvelope]:
        """The next ``count`` events."""
        return [self.make() for _ in range(count)]

    def payload(self) -> bytes:
        """One encoded envelope: the entry or value written to Redis and LMDB."""
        event = self.make()
        wire = _wire(event.event_id, event.sequence, self._event["delta"])
        return bytes(wire.SerializeToString())


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def latency_summary(seconds: Sequence[float]) -> Result:
    """p50, p99, mean and max of latencies given in seconds, reported in ms."""
    ordered = sorted(seconds)
    mean = sum(ordered) / len(ordered) if ordered else 0.0
    return {
        "samples": len(ordered),
        "p50_ms": percentile(ordered, 0.50) * 1e3,
        "p99_ms": percentile(ordered, 0.99) * 1e3,
        "mean_ms": mean * 1e3,
        "max_ms": (ordered[-1] if ordered else 0.0) * 1e3,
    }


def rate_result(count: int, elapsed: float, latencies: Sequence[float] | None = None) -> Result:
    """``count`` operations in ``elapsed`` seconds, with their latencies if given."""
    result: Result = {
        "count": count,
        "elapsed_s": elapsed,
        "rate_per_s": count / elapsed if elapsed > 0 else 0.0,
    }
    if latencies is not None:
        result.update(latency_summary(latencies))
    return result


class Deadline:
    """A monotonic deadline ``seconds`` from now."""

    def __init__(self, seconds: float) -> None:
        self.start = time.perf_counter()
        self.end = self.start + seconds

    def passed(self) -> bool:
        """Whether the deadline is reached."""
        return time.perf_counter() >= self.end

    def elapsed(self) -> float:
        """Seconds since the deadline was set."""
        return time.perf_counter() - self.start
