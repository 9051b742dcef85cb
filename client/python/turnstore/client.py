"""The async client: a typed façade over the generated gRPC stubs.

``TurnstoreClient`` owns one channel. ``client.events`` implements
:class:`~turnstore.protocols.EventStore`; ``client.history(key)``
implements :class:`~turnstore.protocols.HistoryStore` for one conversation
key. Every failed call raises a :class:`~turnstore.errors.TurnstoreError`
subclass whose ``__cause__`` is the gRPC error.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

import grpc

from turnstore._auth import ClientTls, bearer_token_interceptors
from turnstore._convert import JSON, envelopes_from_protos, fill_envelope
from turnstore._retry import NO_RETRY, RetryPolicy, call_with_retry
from turnstore._shared_stream import SharedAppendStream
from turnstore._status import mapped_stream
from turnstore._validate import (
    check_offset,
    check_target,
    check_text,
    check_thread_id,
    check_turn,
)
from turnstore.admin import TurnstoreAdmin
from turnstore.errors import (
    InvalidArgumentError,
    SnapshotFormatError,
    TurnAlreadyFinishedError,
    UnavailableError,
)
from turnstore.models import AgentEventEnvelope, ConversationSnapshot, StoredTurnEvents
from turnstore.results import SnapshotVersionInfo, StoredEvent, VersionedSnapshot
from turnstore.streams import EventAppender, Replay, replay_request
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

__all__ = [
    "RetryPolicy",
    "SnapshotVersionInfo",
    "StoredEvent",
    "TurnstoreClient",
    "TurnstoreEventStore",
    "TurnstoreHistoryStore",
    "VersionedSnapshot",
]

T = TypeVar("T")


class _ClientDefault:
    """The type of :data:`CLIENT_DEFAULT`."""

    def __repr__(self) -> str:
        return "CLIENT_DEFAULT"


# A call's ``timeout`` when it is not given: the client's ``timeout``.
CLIENT_DEFAULT: Final = _ClientDefault()

WriteMode = Literal["stream", "unary"]
WRITE_MODES: Final = ("stream", "unary")

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


class TurnstoreEventStore:
    """:class:`~turnstore.protocols.EventStore` over a turnstore daemon.

    Obtain it as ``client.events``. Every write is acknowledged only after
    the daemon has durably committed it.
    """

    def __init__(
        self,
        stub: pb_grpc.EventStoreServiceStub,
        timeout: float | None,
        retry: RetryPolicy,
        write_mode: WriteMode = "stream",
        open_append_stream: Callable[[], Any] | None = None,
    ) -> None:
        self._stub = stub
        self._open_append_stream = open_append_stream
        self._timeout = timeout
        self._retry = retry
        self.write_mode: WriteMode = write_mode
        self._shared: SharedAppendStream | None = None

    def _deadline(self, timeout: float | _ClientDefault | None) -> float | None:
        return self._timeout if isinstance(timeout, _ClientDefault) else timeout

    async def append(
        self,
        thread_id: str,
        turn: int,
        envelope: AgentEventEnvelope,
        *,
        timeout: float | _ClientDefault | None = CLIENT_DEFAULT,
    ) -> int:
        """Store ``envelope`` at the end of ``turn``; return its position in the thread.

        Raises TurnFinishedError when the turn is finished, EventIdConflictError
        when its event id is stored in another turn. An envelope whose event id
        is already stored in this turn is not stored again: its original
        position is returned. ``timeout`` overrides the client's deadline for
        this call (None: none); past it, DeadlineExceededError is raised and
        the append may still take effect.
        """
        return (await self.append_many(thread_id, turn, [envelope], timeout=timeout))[0]

    async def append_many(
        self,
        thread_id: str,
        turn: int,
        envelopes: Sequence[AgentEventEnvelope],
        *,
        timeout: float | _ClientDefault | None = CLIENT_DEFAULT,
    ) -> list[int]:
        """Store ``envelopes`` at the end of ``turn`` atomically; return their positions.

        Either all are stored or none is. Raises InvalidArgumentError for an
        empty list. ``timeout`` is as in :meth:`append`.
        """
        deadline = self._deadline(timeout)
        check_thread_id(thread_id)
        check_turn(turn)
        if not envelopes:
            raise InvalidArgumentError("events: must hold at least one event")
        if self.write_mode == "stream":
            item = pb.AppendStreamRequest(thread_id=thread_id, turn=turn)
            add_to_item = item.events.add
            for envelope in envelopes:
                fill_envelope(add_to_item(), envelope)
            return await self._shared_stream().send(item, deadline)
        request = pb.AppendRequest(thread_id=thread_id, turn=turn)
        add = request.events.add
        for envelope in envelopes:
            fill_envelope(add(), envelope)
        response = await call_with_retry(
            lambda: self._stub.Append(request, timeout=deadline), self._retry
        )
        return list(response.positions)

    async def finish_turn(
        self,
        thread_id: str,
        turn: int,
        *,
        timeout: float | _ClientDefault | None = CLIENT_DEFAULT,
    ) -> None:
        """Close ``turn``. A turn never appended to becomes an empty finished turn.

        Raises TurnAlreadyFinishedError when the turn is already finished
        (but not when a retry of this call finds it finished by its own
        earlier attempt). ``timeout`` is as in :meth:`append`.
        """
        deadline = self._deadline(timeout)
        check_thread_id(thread_id)
        check_turn(turn)
        if self.write_mode == "stream":
            item = pb.AppendStreamRequest(thread_id=thread_id, turn=turn, finish_turn=True)
            await self._shared_stream().send(item, deadline)
            return
        request = pb.FinishTurnRequest(thread_id=thread_id, turn=turn)
        # The finish may have committed before the daemon went away, so a
        # retry that finds the turn finished is this call's own success.
        await call_with_retry(
            lambda: self._stub.FinishTurn(request, timeout=deadline),
            self._retry,
            (TurnAlreadyFinishedError, pb.FinishTurnResponse()),
        )

    def _shared_stream(self) -> SharedAppendStream:
        if self._shared is None:
            if self._open_append_stream is None:
                raise RuntimeError("this TurnstoreEventStore was made without an append stream")
            self._shared = SharedAppendStream(self._open_append_stream, self._retry)
        return self._shared

    async def aclose(self) -> None:
        """Close the shared append stream; calls waiting on it fail with UnavailableError."""
        if self._shared is not None:
            await self._shared.close()

    async def get_turn(self, thread_id: str, turn: int) -> StoredTurnEvents | None:
        """The turn, or None for an unknown thread or turn."""
        check_thread_id(thread_id)
        check_turn(turn)
        request = pb.GetTurnRequest(thread_id=thread_id, turn=turn)
        response = await call_with_retry(
            lambda: self._stub.GetTurn(request, timeout=self._timeout), self._retry
        )
        if not response.found:
            return None
        return StoredTurnEvents(
            response.turn.turn,
            envelopes_from_protos(response.turn.events),
            response.turn.finished,
        )

    async def get_turns(self, thread_id: str) -> list[StoredTurnEvents]:
        """Every turn in ascending turn order; empty for an unknown thread."""
        check_thread_id(thread_id)
        return await call_with_retry(lambda: self._list_turns(thread_id), self._retry)

    async def _list_turns(self, thread_id: str) -> list[StoredTurnEvents]:
        turns: list[StoredTurnEvents] = []
        call = self._stub.ListTurns(pb.ListTurnsRequest(thread_id=thread_id), timeout=self._timeout)
        async for message in call:
            piece = message.turn
            events = envelopes_from_protos(piece.events)
            if turns and turns[-1].turn == piece.turn:
                turns[-1].events.extend(events)
            else:
                turns.append(StoredTurnEvents(piece.turn, events, piece.finished))
        return turns

    async def clear(self, thread_id: str) -> None:
        """Remove everything of the thread; a no-op for an unknown thread."""
        check_thread_id(thread_id)
        request = pb.ClearRequest(thread_id=thread_id)
        await call_with_retry(lambda: self._stub.Clear(request, timeout=self._timeout), self._retry)

    async def get_events(self, thread_id: str) -> list[AgentEventEnvelope]:
        """All envelopes, turn by turn in ascending order, each turn in append order."""
        return await self.get_events_since(thread_id, 0)

    async def event_count(self, thread_id: str) -> int:
        """The number of envelopes in the thread (0 for an unknown thread)."""
        check_thread_id(thread_id)
        request = pb.EventCountRequest(thread_id=thread_id)
        response = await call_with_retry(
            lambda: self._stub.EventCount(request, timeout=self._timeout), self._retry
        )
        return int(response.count)

    async def get_events_since(self, thread_id: str, offset: int) -> list[AgentEventEnvelope]:
        """The envelopes of :meth:`get_events` after its first ``offset``.

        The read covers the events committed when it started; it raises
        ThreadClearedError if the thread is cleared while it runs.
        """
        check_thread_id(thread_id)
        check_offset(offset)
        request = pb.ReadEventsRequest(
            thread_id=thread_id, offset=offset, order=pb.EVENT_ORDER_TURN
        )

        async def read() -> list[AgentEventEnvelope]:
            envelopes: list[AgentEventEnvelope] = []
            async for message in self._stub.ReadEvents(request, timeout=self._timeout):
                envelopes += envelopes_from_protos(message.events)
            return envelopes

        return await call_with_retry(read, self._retry)

    async def read_events(
        self, thread_id: str, offset: int = 0, *, order: str = "commit"
    ) -> AsyncIterator[StoredEvent]:
        """Stream stored events, skipping the first ``offset`` in ``order``.

        ``order`` is ``"commit"`` (by position: ``offset`` is the first
        position returned) or ``"turn"`` (the order of :meth:`get_events`).
        The read covers the events committed when it started; it raises
        ThreadClearedError if the thread is cleared while it runs.
        """
        check_thread_id(thread_id)
        check_offset(offset)
        orders = {"commit": pb.EVENT_ORDER_COMMIT, "turn": pb.EVENT_ORDER_TURN}
        if order not in orders:
            raise ValueError(f"order must be 'commit' or 'turn', not {order!r}")
        request = pb.ReadEventsRequest(thread_id=thread_id, offset=offset, order=orders[order])
        async for message in mapped_stream(self._stub.ReadEvents(request, timeout=self._timeout)):
            for event in message.events:
                yield StoredEvent.from_proto(event)

    def replay(
        self,
        thread_id: str,
        after: int | None = None,
        *,
        follow: bool = False,
        from_turn: int | None = None,
        to_turn: int | None = None,
        event_types: Sequence[str] | None = None,
        until_turn_finished: int | None = None,
        epoch: int | None = None,
        timeout: float | _ClientDefault | None = CLIENT_DEFAULT,
        max_events_per_message: int = 0,
    ) -> Replay:
        """Replay a thread after position ``after`` (None: from the start).

        Yields stored events in position order with the markers
        ``TurnFinished``, ``CaughtUp`` (once) and ``ThreadCleared``. Without
        ``follow`` it ends once caught up; with it, it goes on with every new
        commit until ``until_turn_finished`` is finished, the thread is
        cleared, ``timeout`` passes (DeadlineExceededError) or it is closed.
        ``from_turn``/``to_turn`` bound the turns and ``event_types`` the
        types of events yielded. To resume, pass the previous replay's
        ``last_position`` as ``after`` and its ``epoch`` as ``epoch``.

        A cursor that was never handed out for this thread (``after`` at or
        past its end) fails with CursorOutOfRangeError instead of waiting
        silently. An ``epoch`` that is not the thread's current one (the
        thread was cleared, or the database restored from a backup) yields
        ``ThreadCleared`` and ends: replay again without ``after``/``epoch``.

        ``timeout`` bounds the whole replay, retries included; by default it
        is the client's deadline without ``follow`` and none with it (a
        follower is long-lived; keepalive pings find a daemon that stopped
        answering). A replay that fails with UnavailableError before its first
        item is started again per the client's retry policy; after it, the
        error is raised (resume with ``after``/``epoch``).
        """
        request = replay_request(
            thread_id,
            after,
            follow=follow,
            from_turn=from_turn,
            to_turn=to_turn,
            event_types=event_types,
            until_turn_finished=until_turn_finished,
            epoch=epoch,
            max_events_per_message=max_events_per_message,
        )
        if isinstance(timeout, _ClientDefault):
            timeout = None if follow else self._timeout
        loop = asyncio.get_running_loop()
        # One deadline for the whole replay, retries included.
        ends_at = None if timeout is None else loop.time() + timeout

        def restart() -> Any:
            left = None if ends_at is None else max(ends_at - loop.time(), 0.0)
            return self._stub.Replay(request, timeout=left)

        return Replay(restart(), after, epoch, restart=restart, retry=self._retry)

    def appender(self) -> EventAppender:
        """Open a streaming appender (an ``AppendStream``); use it as ``async with``.

        Its ``append`` and ``finish_turn`` each have the client's deadline.
        """
        return EventAppender(self._stub, self._timeout)


class TurnstoreHistoryStore:
    """:class:`~turnstore.protocols.HistoryStore` for one conversation key.

    Obtain it as ``client.history(key)``. Snapshots are stored as their JSON
    text with content type ``application/json``. Beyond the contract's
    ``save`` and ``load``, it offers optimistic concurrency
    (:meth:`save_versioned` with ``expected_version``), the kept versions
    (:meth:`list_versions`, :meth:`load_versioned` of one) and :meth:`delete`.
    """

    def __init__(
        self,
        stub: pb_grpc.HistoryStoreServiceStub,
        key: str,
        timeout: float | None,
        retry: RetryPolicy,
    ) -> None:
        check_text(key, "key")
        self._stub = stub
        self.key = key
        self._timeout = timeout
        self._retry = retry

    async def save(self, snapshot: ConversationSnapshot) -> None:
        """Store ``snapshot`` as a full overwrite of the previous one, durably."""
        await self.save_versioned(snapshot)

    async def save_versioned(
        self, snapshot: ConversationSnapshot, expected_version: int | None = None
    ) -> int:
        """Like :meth:`save`, returning the new version (1 for the first save).

        With ``expected_version`` (the version last loaded; 0 for "nothing is
        stored"), the save happens only if the key is still at that version,
        else VersionConflictError (with ``current_version``) is raised and
        nothing changes. Such a save is not retried on UnavailableError, as
        its first attempt may have committed.
        """
        data = snapshot.to_json_bytes()
        request = pb.SaveRequest(key=self.key, data=data, content_type=JSON)
        retry = self._retry
        if expected_version is not None:
            check_turn(expected_version, "expected_version")
            request.expected_version = expected_version
            retry = NO_RETRY
        response = await call_with_retry(
            lambda: self._stub.Save(request, timeout=self._timeout), retry
        )
        return int(response.version)

    async def load(self) -> ConversationSnapshot | None:
        """The latest saved snapshot, or None when nothing was ever saved.

        Raises SnapshotFormatError when the stored data is not a valid
        version-1 snapshot (written by another client, for example).
        """
        loaded = await self.load_versioned()
        return None if loaded is None else loaded.snapshot

    async def load_versioned(self, version: int | None = None) -> VersionedSnapshot | None:
        """The latest snapshot (or the kept ``version``) with its version.

        None when nothing is stored, the key was deleted, or that version is
        no longer kept.
        """
        request = pb.LoadRequest(key=self.key)
        if version is not None:
            check_turn(version, "version")
            request.version = version
        response = await call_with_retry(
            lambda: self._stub.Load(request, timeout=self._timeout), self._retry
        )
        if not response.found:
            return None
        stored = response.snapshot
        if stored.content_type not in ("", JSON):
            raise SnapshotFormatError(
                f"snapshot of {self.key!r} is {stored.content_type!r}, not JSON"
            )
        return VersionedSnapshot(
            ConversationSnapshot.from_json(stored.data), stored.version, stored.saved_at_unix_nanos
        )

    async def list_versions(self) -> list[SnapshotVersionInfo]:
        """The kept versions, newest first; empty for an unknown or deleted key."""
        request = pb.ListVersionsRequest(key=self.key)
        response = await call_with_retry(
            lambda: self._stub.ListVersions(request, timeout=self._timeout), self._retry
        )
        return [
            SnapshotVersionInfo(v.version, v.saved_at_unix_nanos, v.size_bytes, v.content_type)
            for v in response.versions
        ]

    async def delete(self) -> int:
        """Delete every kept version; return how many. A no-op for an unknown key.

        Versions do not restart: the next save gets a higher version.
        """
        request = pb.DeleteRequest(key=self.key)
        response = await call_with_retry(
            lambda: self._stub.Delete(request, timeout=self._timeout), self._retry
        )
        return int(response.removed_versions)


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
        self.events = TurnstoreEventStore(
            pb_grpc.EventStoreServiceStub(self._channel),
            timeout,
            self._retry,
            write_mode,
            SharedAppendStream.open_call_of(self._channel),
        )
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

    async def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the channel connects; raise UnavailableError after ``timeout``."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError as error:
            raise UnavailableError(f"no turnstore daemon at {self.target!r}") from error

    async def close(self) -> None:
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
        await self.close()
