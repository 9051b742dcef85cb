"""What a request may cost the daemon before it is refused.

Each request is checked at the cheapest point that can refuse it:

1. the bearer token, before its message is even read
   (:class:`turnstore.server.api.grpc.interceptors.BearerTokenInterceptor`);
2. the message's size against its RPC's limit, before it is decoded: only
   ``Append``, ``AppendStream`` (batches), ``Save`` (snapshots) and the
   history's ``Batch`` accept large messages, every other RPC at most
   :data:`SMALL_REQUEST_BYTES`;
3. a large batch's number of events (and each event's encoded size), or a
   large history Batch's number of operations, by a scan of the message's
   wire fields (:mod:`.wire_scan`) that stops at the limit + 1, before any
   event (or operation) is decoded (an AppendStream message: its
   items and its events in all items together; each item's own count is
   checked before its events are converted, in the service);
4. only then is it decoded: a small message at once (and an Append's count
   checked before anything else is done with it), a large one on the
   thread pool, at most ``large_decodes`` at a time, so that the event loop
   (health checks, followers, acknowledgements) keeps running.

gRPC itself bounds the rest (:meth:`IngressConfig.grpc_options`): the size
of any one message, the streams open on one connection and the number of
connections. Nothing here imports gRPC or generated code: the service
passes the request classes in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Final

from turnstore.server.api.grpc.wire_scan import (
    RefusedRequest,
    scan_append,
    scan_batch,
    scan_stream_message,
)
from turnstore.server.storage.config import Limits
from turnstore.server.storage.errors import InvalidArgumentError

KIB: Final = 1024
# Every RPC that carries no batch and no snapshot: ids are at most 511 bytes
# and a Replay's type filter at most 64 x 128 bytes, so 64 KiB is generous.
SMALL_REQUEST_BYTES: Final = 64 * KIB
# Larger messages are scanned and decoded on the thread pool.
INLINE_DECODE_BYTES: Final = 64 * KIB
# The most events a message decoded at once can hold (2 bytes each at least).
MIN_EVENTS_PER_STREAM_MESSAGE: Final = INLINE_DECODE_BYTES // 2
# Room in a SaveRequest beside the snapshot itself: key, content type, version.
SNAPSHOT_REQUEST_ROOM: Final = 64 * KIB
# gRPC connections open at once where the file limit allows them.
DEFAULT_MAX_CONNECTIONS: Final = 1024
# The longest a connection may take to finish its handshakes.
HANDSHAKE_SECONDS: Final = 20.0
# The largest header block of a call (the token, a deadline, metadata).
MAX_HEADER_BYTES: Final = 16 * KIB
# Pings from clients at most this often; the daemon's own to idle peers.
KEEPALIVE_MIN_PING_MS: Final = 10_000
SERVER_KEEPALIVE_MS: Final = 60_000
SERVER_KEEPALIVE_TIMEOUT_MS: Final = 20_000


@dataclass(frozen=True)
class IngressConfig:
    """The share of the daemon one connection, one call and one message may take.

    ``max_request_bytes`` is the largest request message (None: what the
    limits need, :attr:`Limits.max_message_bytes`); ``max_streams_per_connection``
    the calls open at once on one connection (more wait on the client's side);
    ``max_connections`` the connections open at once (more are closed at
    once); ``large_decodes`` the messages over :data:`INLINE_DECODE_BYTES`
    decoded at once (more wait, holding only their received bytes);
    ``max_events_per_stream_message`` the events one AppendStream message
    may carry in all its items (each item is held to the per-append limits
    on its own), so that what one message costs to decode and convert is
    bounded whatever it packs into ``more``.
    """

    max_request_bytes: int | None = None
    max_streams_per_connection: int = 256
    max_connections: int | None = None
    large_decodes: int = 2
    max_events_per_stream_message: int = 200_000
    idle_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.max_request_bytes is not None and self.max_request_bytes < SMALL_REQUEST_BYTES:
            raise ValueError(f"max_request_bytes must be at least {SMALL_REQUEST_BYTES}")
        for name in ("max_streams_per_connection", "max_connections", "large_decodes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.idle_seconds <= 0:
            raise ValueError("idle_seconds must be positive")
        # Only messages decoded on the thread pool are scanned: no message
        # decoded at once may hold more events than this.
        if self.max_events_per_stream_message < MIN_EVENTS_PER_STREAM_MESSAGE:
            raise ValueError(
                f"max_events_per_stream_message must be at least {MIN_EVENTS_PER_STREAM_MESSAGE}"
            )

    def request_bytes(self, limits: Limits) -> int:
        """The largest request message accepted."""
        if self.max_request_bytes is not None:
            return self.max_request_bytes
        return limits.max_message_bytes

    def grpc_options(self, limits: Limits) -> list[tuple[str, int]]:
        """The gRPC server options that enforce the per-message and per-connection bounds.

        ``max_connections`` None stands for :data:`DEFAULT_MAX_CONNECTIONS`
        (the daemon fits it to its file limit before it gets here).
        """
        return [
            ("grpc.max_receive_message_length", self.request_bytes(limits)),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            (
                "grpc.max_allowed_incoming_connections",
                self.max_connections or DEFAULT_MAX_CONNECTIONS,
            ),
            # A connection with no call open for this long is closed (it
            # holds a file and memory; clients reconnect by themselves).
            ("grpc.max_connection_idle_ms", int(self.idle_seconds * 1000)),
            # A connection that has not finished its TLS and HTTP/2
            # handshake by then (one that sends nothing) is closed.
            (
                "grpc.server_handshake_timeout_ms",
                int(min(self.idle_seconds, HANDSHAKE_SECONDS) * 1000),
            ),
            # Header blocks are refused past this size while they are
            # parsed, before the token is checked: a pre-auth header block
            # (CONTINUATION frames that never end) holds at most this much.
            ("grpc.max_metadata_size", MAX_HEADER_BYTES),
            ("grpc.absolute_max_metadata_size", MAX_HEADER_BYTES),
            # Clients' keepalive pings (every 20-30 s, with or without calls
            # open) are allowed; pings more often than every 10 s count as
            # abuse and, after two, end the connection (gRPC's rule).
            ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_MIN_PING_MS),
            ("grpc.keepalive_permit_without_calls", 1),
            # The daemon pings its peers too, so that a connection to a
            # peer that vanished (no FIN) is closed and its file freed.
            ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_MS),
            ("grpc.keepalive_timeout_ms", SERVER_KEEPALIVE_TIMEOUT_MS),
            # ... however long a connection stays without data (gRPC's
            # default stops after two pings without data).
            ("grpc.http2.max_pings_without_data", 0),
        ]


def undecodable(error: Exception) -> RefusedRequest:
    """The refusal of a message the protobuf runtime could not decode."""
    problem = str(error) or type(error).__name__
    return RefusedRequest(InvalidArgumentError("request", f"cannot be decoded: {problem}"))


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
        """The decoded message, or a :class:`RefusedRequest` for it.

        Raises InvalidArgumentError instead when the refusal ends the
        stream (an AppendStream message over the limits as a whole).
        """
        ingress = self._ingress
        async with ingress.decode_slots:
            loop = asyncio.get_running_loop()
            data, self._data = self._data, b""  # hold the bytes in one place only
            message = await loop.run_in_executor(ingress.executor, self._decode, data)
        if isinstance(message, RefusedRequest) and message.ends_stream:
            raise message.error()
        return message


class Ingress:
    """Builds each RPC's request deserializer from the limits.

    ``executor`` runs the large decodes; ``max_stream_items`` is the most
    items one AppendStream message may carry. A deserializer never raises:
    a refused or undecodable message becomes a :class:`RefusedRequest`, a
    large one a :class:`RawRequest`.
    """

    def __init__(
        self, config: IngressConfig, limits: Limits, executor: Executor, max_stream_items: int
    ) -> None:
        self.config = config
        self.limits = limits
        self.executor = executor
        self.max_stream_items = max_stream_items
        self.decode_slots = asyncio.Semaphore(config.large_decodes)
        self._request_bytes = config.request_bytes(limits)

    def limit_for(self, message_name: str) -> int:
        """The largest message accepted for a request of this name."""
        if message_name == "AppendRequest":
            # Each entry: a tag byte, a length of at most 10 bytes, the event.
            most_events = self.limits.max_events_per_append * (self.limits.max_event_bytes + 11)
            return min(self._request_bytes, most_events + SMALL_REQUEST_BYTES)
        if message_name == "AppendStreamRequest":
            return self._request_bytes
        if message_name == "SaveRequest":
            return min(self._request_bytes, self.limits.max_snapshot_bytes + SNAPSHOT_REQUEST_ROOM)
        if message_name == "BatchRequest":
            # Several saves: the message limit bounds them all together.
            return self._request_bytes
        return SMALL_REQUEST_BYTES

    def deserializer(self, method_name: str, request_class: Any) -> Callable[[bytes], Any]:
        """The request deserializer of one RPC (``method_name`` goes into refusals)."""
        name = request_class.DESCRIPTOR.name
        limit = self.limit_for(name)
        max_events = self.limits.max_events_per_append
        max_event_bytes = self.limits.max_event_bytes
        stream_events = self.config.max_events_per_stream_message
        stream_items = self.max_stream_items

        def decode(data: bytes) -> Any:
            try:
                return request_class.FromString(data)
            except Exception as error:  # DecodeError, bad UTF-8, ...
                return undecodable(error)

        def decode_append(data: bytes) -> Any:
            message = decode(data)
            if not isinstance(message, RefusedRequest) and len(message.events) > max_events:
                return RefusedRequest(
                    InvalidArgumentError(
                        "events",
                        f"holds {len(message.events)} events, over the limit of "
                        f"{max_events} per append",
                    )
                )
            return message

        def scan_and_decode_append(data: bytes) -> Any:
            refused = scan_append(data, max_events, max_event_bytes)
            return refused if refused is not None else decode_append(data)

        def scan_and_decode_stream(data: bytes) -> Any:
            refused = scan_stream_message(data, stream_events, stream_items)
            return refused if refused is not None else decode(data)

        def scan_and_decode_batch(data: bytes) -> Any:
            refused = scan_batch(data, self.limits.max_batch_operations)
            return refused if refused is not None else decode(data)

        inline, large = {
            "AppendRequest": (decode_append, scan_and_decode_append),
            "AppendStreamRequest": (decode, scan_and_decode_stream),
            "BatchRequest": (decode, scan_and_decode_batch),
        }.get(name, (decode, decode))

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
                return inline(data)
            return RawRequest(data, large, self)

        return deserialize
