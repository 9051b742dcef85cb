"""A raw HTTP/2 client that sends what no gRPC library would: half-sent messages,
header blocks that never end.

Only what the attacks need is here: the connection preface, SETTINGS (acked),
PING (answered), WINDOW_UPDATE (tracked, so that the client sends exactly as
much as the daemon's flow control lets it and no more), HEADERS with HPACK
literals (no Huffman, no indexing), DATA and CONTINUATION. Blocking sockets:
each connection is driven by one thread of the test.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from typing import Final

DATA: Final = 0x0
HEADERS: Final = 0x1
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9
END_STREAM: Final = 0x1
ACK: Final = 0x1
END_HEADERS: Final = 0x4
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS_INITIAL_WINDOW_SIZE: Final = 0x4
SETTINGS_MAX_FRAME_SIZE: Final = 0x5
DEFAULT_WINDOW: Final = 65_535
MAX_FRAME: Final = 16_384


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_length(length: int) -> bytes:
    """An HPACK string length (no Huffman): what a string's bytes follow."""
    return _hpack_int(length, 7, 0)


def hpack_string(raw: bytes) -> bytes:
    """An HPACK string literal (no Huffman)."""
    return hpack_length(len(raw)) + raw


def literal(name: str, value: bytes | str) -> bytes:
    """An HPACK "literal header field without indexing, new name" (no Huffman)."""
    raw_name = name.encode()
    raw_value = value.encode() if isinstance(value, str) else value
    return (
        b"\x00"
        + _hpack_int(len(raw_name), 7, 0)
        + raw_name
        + _hpack_int(len(raw_value), 7, 0)
        + raw_value
    )


def grpc_request_headers(path: str, authority: str, token: str | None = None) -> bytes:
    """The header block of a gRPC call to ``path``."""
    block = b"".join(
        literal(name, value)
        for name, value in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )
    if token is not None:
        block += literal("authorization", f"Bearer {token}")
    return block


class RawConnection:
    """One HTTP/2 connection to ``host:port`` (or a Unix socket ``path``).

    Tracks the flow-control windows the daemon grants; :meth:`send_data`
    sends only within them. ``closed`` is set once the daemon sent GOAWAY or
    closed the socket; ``reset`` holds the streams it reset.
    """

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setblocking(True)
        self.connection_window = DEFAULT_WINDOW
        self.initial_stream_window = DEFAULT_WINDOW
        self.max_frame = MAX_FRAME
        self.stream_windows: dict[int, int] = {}
        self.reset: set[int] = set()
        self.ended: set[int] = set()
        self.closed = False
        self._buffer = b""
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0))

    def send(self, data: bytes) -> None:
        """Send raw bytes (frames); a closed socket marks the connection closed."""
        try:
            self.sock.sendall(data)
        except OSError:
            self.closed = True

    def open_stream(self, stream: int, block: bytes) -> None:
        """Send a complete header block opening ``stream``."""
        self.stream_windows[stream] = self.initial_stream_window
        self.send(frame(HEADERS, END_HEADERS, stream, block))

    def send_data(self, stream: int, data: bytes | memoryview) -> int:
        """Send as much of ``data`` on ``stream`` as the windows allow now; the bytes sent."""
        sent = 0
        while sent < len(data) and not self.closed and stream not in self.reset:
            size = min(
                self.max_frame,
                len(data) - sent,
                self.connection_window,
                self.stream_windows[stream],
            )
            if size <= 0:
                break
            self.send(frame(DATA, 0, stream, bytes(data[sent : sent + size])))
            self.connection_window -= size
            self.stream_windows[stream] -= size
            sent += size
        return sent

    def pump(self, timeout: float) -> bool:
        """Read and handle the frames that arrive within ``timeout``; True if any did."""
        got = False
        deadline = time.monotonic() + timeout
        while not self.closed:
            left = deadline - time.monotonic()
            readable, _, _ = select.select([self.sock], [], [], max(0.0, left))
            if not readable:
                return got
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                return True
            got = True
            self._buffer += chunk
            self._handle_frames()
            timeout = 0.0  # drain what is there, then return
            deadline = time.monotonic()
        return got

    def _handle_frames(self) -> None:
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[:3], "big")
            if len(self._buffer) < 9 + length:
                return
            kind, flags = self._buffer[3], self._buffer[4]
            stream = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            payload = self._buffer[9 : 9 + length]
            self._buffer = self._buffer[9 + length :]
            if kind == SETTINGS and not flags & ACK:
                for at in range(0, len(payload), 6):
                    ident, value = struct.unpack(">HI", payload[at : at + 6])
                    if ident == SETTINGS_INITIAL_WINDOW_SIZE:
                        delta = value - self.initial_stream_window
                        self.initial_stream_window = value
                        for known in self.stream_windows:
                            self.stream_windows[known] += delta
                    elif ident == SETTINGS_MAX_FRAME_SIZE:
                        self.max_frame = value
                self.send(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                self.send(frame(PING, ACK, 0, payload))
            elif kind == WINDOW_UPDATE:
                increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                if stream == 0:
                    self.connection_window += increment
                elif stream in self.stream_windows:
                    self.stream_windows[stream] += increment
            elif kind == RST_STREAM:
                self.reset.add(stream)
            elif kind in (HEADERS, DATA) and flags & END_STREAM:
                self.ended.add(stream)
            elif kind == GOAWAY:
                self.closed = True

    def close(self) -> None:
        """Close the socket (the daemon sees the connection end)."""
        self.closed = True
        self.sock.close()
