"""The async client: a typed façade over the generated gRPC stubs.

``TurnstoreClient`` owns one channel. ``client.events`` (a
:class:`~turnstore.events.TurnstoreEventStore`) implements
:class:`~turnstore.protocols.EventStore`; ``client.history(key)`` (a
:class:`~turnstore.history.TurnstoreHistoryStore`) implements
:class:`~turnstore.protocols.HistoryStore` for one conversation key;
``client.admin`` operates the daemon. Every failed call raises a
:class:`~turnstore.errors.TurnstoreError` subclass whose ``__cause__`` is the
gRPC error.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import grpc

from turnstore._auth import ClientTls, bearer_token_interceptors
from turnstore._retry import RetryPolicy
from turnstore._validate import check_target
from turnstore.admin import KeyInfo, TurnstoreAdmin
from turnstore.errors import UnavailableError
from turnstore.events import WRITE_MODES, TurnstoreEventStore, WriteMode
from turnstore.history import BatchOperation, TurnstoreHistoryStore, apply_batch
from turnstore.history import list_keys as history_list_keys
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from turnstore.results import BatchResult

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "KEEPALIVE_OPTIONS",
    "MAX_MESSAGE_BYTES",
    "TurnstoreClient",
]

DEFAULT_TARGET: Final = "127.0.0.1:7070"
# Every call's deadline when the client's ``timeout`` is not given.
DEFAULT_TIMEOUT: Final = 30.0
# HTTP/2 keepalive pings, while idle too: a daemon that stops answering (a
# frozen process, a dropped network path) fails the open streams with
# UnavailableError instead of leaving them waiting forever. The daemon allows
# pings down to every 10 s. grpc waits for a ping's answer for
# ping_timeout_ms (its default is a minute), keepalive_timeout_ms aside.
KEEPALIVE_OPTIONS: Final = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.ping_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)
# Matches the daemon's limit, so large turns and snapshots come through.
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024


class TurnstoreClient:
    """A connection to a turnstore daemon; use as ``async with``.

    ``target`` is ``HOST:PORT`` or ``unix:PATH`` (anything else raises
    InvalidArgumentError at once, saying what a target looks like). ``timeout`` is the
    deadline in seconds (default 30; None: no deadline) of each unary call,
    of each append and finish over the shared append stream (the stream
    stays open for the others), of each whole streaming read, and of a
    replay that does not follow; past it a call raises DeadlineExceededError
    (a write may still take effect). The channel sends HTTP/2 keepalive
    pings every 20 s, idle too, and fails the open streams with
    UnavailableError when one goes unanswered for 10 s (override with
    ``options``: ``grpc.keepalive_time_ms``, ``grpc.http2.ping_timeout_ms``).
    Calls that fail with UnavailableError are retried by ``retry``
    (default: 6 attempts over about 3 to 5 s), then raise it.
    ``token`` is sent as a bearer token on every call (for a daemon started
    with ``--auth-token-file``); ``tls`` makes a TLS channel to a TCP target.
    Without ``tls`` the channel is insecure, so only a Unix socket or a
    loopback host (``localhost``, ``127.x.x.x``, ``[::1]``) is accepted
    unless ``allow_remote=True`` (for a daemon run with ``--allow-remote`` on
    a network you trust); otherwise InvalidArgumentError is raised at once.
    ``write_mode="stream"`` (the default) sends ``events.append``,
    ``append_many`` and ``finish_turn`` over one append stream shared by
    every task using this client (faster, and concurrent writers share
    commits); ``"unary"`` makes each a unary call. Both behave the same.
    Construct it inside a running event loop.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        token: str | None = None,
        tls: ClientTls | None = None,
        options: list[tuple[str, Any]] | None = None,
        write_mode: WriteMode = "stream",
        allow_remote: bool = False,
    ) -> None:
        if write_mode not in WRITE_MODES:
            raise ValueError(f"write_mode must be 'stream' or 'unary', not {write_mode!r}")
        check_target(target, allow_remote=allow_remote or tls is not None)
        self.target = target
        channel_options: list[tuple[str, Any]] = [
            # grpc takes the first value given for a key: the caller's win.
            *(options or []),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # A sidecar restarts in well under a second: reconnect quickly,
            # and keep this channel's connection state to itself, not shared
            # (with its back-off) by every channel to the same target.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.use_local_subchannel_pool", 1),
            *KEEPALIVE_OPTIONS,
        ]
        if tls is not None and tls.server_name:
            channel_options.append(("grpc.ssl_target_name_override", tls.server_name))
        interceptors = bearer_token_interceptors(token) if token else None
        if tls is not None:
            self._channel = grpc.aio.secure_channel(
                target, tls.credentials(), options=channel_options, interceptors=interceptors
            )
        else:
            self._channel = grpc.aio.insecure_channel(
                target, options=channel_options, interceptors=interceptors
            )
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self.events = TurnstoreEventStore(self._channel, timeout, self._retry, write_mode)
        self._history_stub = pb_grpc.HistoryStoreServiceStub(self._channel)

    @functools.cached_property
    def admin(self) -> TurnstoreAdmin:
        """Administrative calls: stats, backups, listings, export and import.

        See :class:`turnstore.admin.TurnstoreAdmin`; it shares this client's
        channel, timeout and retry policy.
        """
        return TurnstoreAdmin(self._channel, self._timeout, self._retry)

    def history(self, key: str) -> TurnstoreHistoryStore:
        """A HistoryStore bound to the conversation ``key`` (non-empty)."""
        return TurnstoreHistoryStore(self._history_stub, key, self._timeout, self._retry)

    def list_keys(
        self,
        *,
        prefix: str = "",
        start_after: str = "",
        end_before: str = "",
        limit: int = 0,
        newest_first: bool = False,
    ) -> AsyncIterator[KeyInfo]:
        """The conversation keys holding a snapshot, in byte order of their UTF-8 form.

        Only keys starting with ``prefix`` and sorting before ``end_before``
        (exclusive, whatever the order), at most ``limit`` (0: all). With
        ``newest_first``, in descending order, so ``list_keys(prefix=p,
        limit=1, newest_first=True)`` is the greatest key under ``p``, read in
        O(1). ``start_after`` continues a listing where its last key was
        (ascending: the keys after it; ``newest_first``: those before it).
        Deleted keys are never listed and cost nothing to skip.
        """
        return history_list_keys(
            self._history_stub, prefix, start_after, end_before, limit, newest_first
        )

    async def batch(self, operations: Sequence[BatchOperation]) -> list[BatchResult]:
        """Apply saves and deletes across keys, in order, all or nothing, in one durable
        commit; one :class:`~turnstore.results.BatchResult` per operation.

        ``operations`` are :class:`~turnstore.history.BatchSave`,
        :class:`~turnstore.history.BatchDelete` and
        :class:`~turnstore.history.BatchDeletePrefix` (at most the daemon's
        ``--max-batch-operations``, 1000 by default). One refused operation
        (VersionConflictError, InvalidArgumentError, PermissionDeniedError; the
        message names its index) refuses the whole batch: nothing changes. A
        batch with a save or an expected version is not retried on
        UnavailableError (its first attempt may have committed).
        """
        return await apply_batch(self._history_stub, operations, self._timeout, self._retry)

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the channel connects; raise UnavailableError after ``timeout``."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError as error:
            raise UnavailableError(f"no turnstore daemon at {self.target!r}") from error

    async def aclose(self) -> None:
        """Close the channel; calls in flight are cancelled. Idempotent."""
        await self.events.aclose()
        await self._channel.close()

    async def __aenter__(self) -> TurnstoreClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
