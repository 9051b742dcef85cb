"""What a request may cost the daemon before it is refused.

Each request is checked at the cheapest point that can refuse it:

1. the bearer token, before its message is even read
   (:class:`turnstore.server.interceptors.BearerTokenInterceptor`);
2. the message's size against its RPC's limit, before it is decoded: only
   ``Append``, ``AppendStream`` (batches) and ``Save`` (snapshots) accept
   large messages, every other RPC at most :data:`SMALL_REQUEST_BYTES`;
3. a batch's number of events (and each event's encoded size), by a scan of
   the message's top-level wire fields that stops at the limit + 1, before
   any event is decoded;
4. only then is it decoded: a small message at once, a large one on the
   thread pool, at most ``large_decodes`` at a time, so that the event loop
   (health checks, followers, acknowledgements) keeps running.

gRPC itself bounds the rest (:meth:`IngressConfig.grpc_options`): the size
of any one message, the streams open on one connection and the number of
connections. No gRPC or generated code is imported by the engine; this
module sits between gRPC and the servicers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Final

from turnstore.server.errors import InvalidArgumentError
from turnstore.server.values import Limits

KIB: Final = 1024
# Every RPC that carries no batch and no snapshot: ids are at most 511 bytes
# and a Replay's type filter at most 64 x 128 bytes, so 64 KiB is generous.
SMALL_REQUEST_BYTES: Final = 64 * KIB
# Larger messages are scanned and decoded on the thread pool.
INLINE_DECODE_BYTES: Final = 64 * KIB
# Room in a SaveRequest beside the snapshot itself: key, content type, version.
SNAPSHOT_REQUEST_ROOM: Final = 64 * KIB


@dataclass(frozen=True)
class IngressConfig:
    """The share of the daemon one connection, one call and one message may take.

    ``max_request_bytes`` is the largest request message (None: what the
    limits need, :attr:`Limits.max_message_bytes`); ``max_streams_per_connection``
    the calls open at once on one connection (more wait on the client's side);
    ``max_connections`` the connections open at once (more are closed at
    once); ``large_decodes`` the messages over :data:`INLINE_DECODE_BYTES`
    decoded at once (more wait, holding only their received bytes).
    """

    max_request_bytes: int | None = None
    max_streams_per_connection: int = 256
    max_connections: int = 1024
    large_decodes: int = 2

    def __post_init__(self) -> None:
        if self.max_request_bytes is not None and self.max_request_bytes < SMALL_REQUEST_BYTES:
            raise ValueError(f"max_request_bytes must be at least {SMALL_REQUEST_BYTES}")
        for name in ("max_streams_per_connection", "max_connections", "large_decodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    def request_bytes(self, limits: Limits) -> int:
        """The largest request message accepted."""
        if self.max_request_bytes is not None:
            return self.max_request_bytes
        return limits.max_message_bytes

    def grpc_options(self, limits: Limits) -> list[tuple[str, int]]:
        """The gRPC server options that enforce the per-message and per-connection bounds."""
        return [
            ("grpc.max_receive_message_length", self.request_bytes(limits)),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            ("grpc.max_allowed_incoming_connections", self.max_connections),
        ]


class RefusedRequest:
    """Stands for a request message refused before or while decoding.

    gRPC answers UNKNOWN when a deserializer raises, so the deserializers
    return this instead and the handlers answer with :meth:`error`
    (INVALID_ARGUMENT). ``request_id`` is the AppendStream item's id when it
    could be read, else 0.
    """

    __slots__ = ("_error", "request_id")

    def __init__(self, error: InvalidArgumentError, request_id: int = 0) -> None:
        self._error = error
        self.request_id = request_id

    def error(self) -> InvalidArgumentError:
        """The error to answer with."""
        return self._error


def undecodable(error: Exception) -> RefusedRequest:
    """The refusal of a message the protobuf runtime could not decode."""
    problem = str(error) or type(error).__name__
    return RefusedRequest(InvalidArgumentError("request", f"cannot be decoded: {problem}"))


@dataclass(frozen=True)
class Batch:
    """Where a batch request keeps its events (and its AppendStream request id)."""

    events_field: int
    request_id_field: int | None


# Request messages that carry batches, by message name.
BATCHES: Final = {
    "AppendRequest": Batch(events_field=3, request_id_field=None),
    "AppendStreamRequest": Batch(events_field=4, request_id_field=1),
}
_SNAPSHOTS: Final = frozenset({"SaveRequest"})


class _Malformed(Exception):
    """The wire scan met bytes that are no protobuf message."""


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise _Malformed
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def scan_batch(
    data: bytes, batch: Batch, max_events: int, max_event_bytes: int
) -> RefusedRequest | None:
    """Check a batch's event count and event sizes from its wire bytes alone.

    Refuses a message that holds more than ``max_events`` ``events`` entries
    (counting stops at ``max_events + 1``, so the work is bounded by the
    limit, not by the message) or an entry longer than ``max_event_bytes``;
    the refusal carries the AppendStream request id when it came before.
    Returns None otherwise. Malformed bytes end the scan without a verdict:
    the decoder then reports them.
    """
    count = 0
    request_id = 0
    depth = 0  # inside unknown groups, whose fields are not the message's
    at, end = 0, len(data)
    try:
        while at < end:
            key, at = _varint(data, at)
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                value, at = _varint(data, at)
                if number == batch.request_id_field and depth == 0:
                    request_id = value
            elif wire_type == 2:
                length, at = _varint(data, at)
                if number == batch.events_field and depth == 0:
                    if count == max_events:
                        error = InvalidArgumentError(
                            "events",
                            f"holds more than {max_events} events, over the limit of "
                            f"{max_events} per append",
                        )
                        return RefusedRequest(error, request_id)
                    if length > max_event_bytes:
                        error = InvalidArgumentError(
                            f"events[{count}]",
                            f"is {length} bytes encoded, over the limit of {max_event_bytes}",
                        )
                        return RefusedRequest(error, request_id)
                    count += 1
                at += length
            elif wire_type == 1:
                at += 8
            elif wire_type == 5:
                at += 4
            elif wire_type == 3:
                depth += 1
            elif wire_type == 4 and depth > 0:
                depth -= 1
            else:
                raise _Malformed
    except _Malformed:
        return None
    return None


class RawRequest:
    """A large request message, received but not yet decoded.

    The handler awaits :meth:`decode`, which scans and decodes it on the
    thread pool once one of the ingress's decode slots is free.
    """

    __slots__ = ("_data", "_decode", "_ingress")

    def __init__(self, data: bytes, decode: Callable[[bytes], Any], ingress: Ingress) -> None:
        self._data = data
        self._decode = decode
        self._ingress = ingress

    async def decode(self) -> Any:
        """The decoded message, or a :class:`RefusedRequest`."""
        ingress = self._ingress
        async with ingress.decode_slots:
            loop = asyncio.get_running_loop()
            data, self._data = self._data, b""  # hold the bytes in one place only
            return await loop.run_in_executor(ingress.executor, self._decode, data)


class Ingress:
    """Builds each RPC's request deserializer from the limits.

    ``executor`` runs the large decodes. A deserializer never raises: a
    refused or undecodable message becomes a :class:`RefusedRequest`, a
    large one a :class:`RawRequest`.
    """

    def __init__(self, config: IngressConfig, limits: Limits, executor: Executor) -> None:
        self.config = config
        self.limits = limits
        self.executor = executor
        self.decode_slots = asyncio.Semaphore(config.large_decodes)
        self._request_bytes = config.request_bytes(limits)

    def limit_for(self, message_name: str) -> int:
        """The largest message accepted for a request of this name."""
        if message_name in BATCHES:
            # Each entry: a tag byte, a length of at most 10 bytes, the event.
            most_events = self.limits.max_events_per_append * (self.limits.max_event_bytes + 11)
            return min(self._request_bytes, most_events + SMALL_REQUEST_BYTES)
        if message_name in _SNAPSHOTS:
            return min(self._request_bytes, self.limits.max_snapshot_bytes + SNAPSHOT_REQUEST_ROOM)
        return SMALL_REQUEST_BYTES

    def deserializer(self, method_name: str, request_class: Any) -> Callable[[bytes], Any]:
        """The request deserializer of one RPC (``method_name`` goes into refusals)."""
        name = request_class.DESCRIPTOR.name
        limit = self.limit_for(name)
        batch = BATCHES.get(name)
        max_events = self.limits.max_events_per_append
        max_event_bytes = self.limits.max_event_bytes

        def decode(data: bytes) -> Any:
            try:
                message = request_class.FromString(data)
            except Exception as error:  # DecodeError, bad UTF-8, ...
                return undecodable(error)
            if batch is not None and len(message.events) > max_events:
                return RefusedRequest(
                    InvalidArgumentError(
                        "events",
                        f"holds {len(message.events)} events, over the limit of "
                        f"{max_events} per append",
                    ),
                    getattr(message, "request_id", 0),
                )
            return message

        def scan_and_decode(data: bytes) -> Any:
            assert batch is not None
            refusal = scan_batch(data, batch, max_events, max_event_bytes)
            return refusal if refusal is not None else decode(data)

        large_decode = scan_and_decode if batch is not None else decode

        def deserialize(data: bytes) -> Any:
            size = len(data)
            if size > limit:
                return RefusedRequest(
                    InvalidArgumentError(
                        "request",
                        f"is {size} bytes, over the limit of {limit} bytes for {method_name}",
                    )
                )
            if size <= INLINE_DECODE_BYTES:
                return decode(data)
            return RawRequest(data, large_decode, self)

        return deserialize
