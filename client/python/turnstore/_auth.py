"""Client-side access: a bearer token on every call, and TLS channels."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


class _TokenMetadata:
    def __init__(self, token: str) -> None:
        self._entry = ("authorization", f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._entry)
        return details._replace(metadata=metadata)


class _UnaryUnary(_TokenMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _UnaryStream(_TokenMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _StreamUnary(_TokenMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._with_token(details), requests)


class _StreamStream(_TokenMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._with_token(details), requests)


def bearer_token_interceptors(token: str) -> list[Any]:
    """Interceptors adding ``authorization: Bearer <token>`` to every call.

    One object per call kind: grpc.aio files each interceptor under the
    first kind it is an instance of.
    """
    return [kind(token) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]


PemSource = str | os.PathLike[str] | bytes
"""A PEM file's path (``str`` or ``Path``), or the PEM data itself as ``bytes``."""


def _pem(source: PemSource | None, name: str) -> bytes | None:
    if source is None:
        return None
    if isinstance(source, bytes):
        if b"-----BEGIN" not in source:
            raise ValueError(f"ClientTls.{name}: bytes must be PEM data (-----BEGIN ...)")
        return source
    if isinstance(source, str | os.PathLike):
        return Path(source).read_bytes()
    raise TypeError(f"ClientTls.{name}: a path (str or Path) or PEM bytes, not {source!r}")


@dataclass(frozen=True)
class ClientTls:
    """TLS for a TCP target: the CA that signed the daemon's certificate, and,
    for mutual TLS, this client's certificate chain and key.

    Each is a PEM file's path (``str`` or ``Path``) or the PEM data as
    ``bytes``. ``server_name`` overrides the name checked against the
    certificate.
    """

    ca: PemSource
    cert: PemSource | None = None
    key: PemSource | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("ClientTls: cert and key go together (mutual TLS)")

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials; raises OSError for unreadable files."""
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca, "ca"),
            private_key=_pem(self.key, "key"),
            certificate_chain=_pem(self.cert, "cert"),
        )
