"""The async client: a typed façade over the generated gRPC stubs.

``TurnstoreClient`` owns one channel. ``client.events`` implements
:class:`~turnstore.protocols.EventStore`; ``client.history(key)``
implements :class:`~turnstore.protocols.HistoryStore` for one conversation
key. Every failed call raises a :class:`~turnstore.errors.TurnstoreError`
subclass whose ``__cause__`` is the gRPC error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Final, TypeVar

import grpc

from turnstore._convert import JSON, StoredEvent, envelope_from_proto, envelope_to_proto
from turnstore._status import error_from_rpc
from turnstore._validate import check_offset, check_thread_id, check_turn
from turnstore.errors import SnapshotFormatError, UnavailableError
from turnstore.models import AgentEventEnvelope, ConversationSnapshot, StoredTurnEvents
from turnstore.streams import EventAppender, Replay, replay_request
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

__all__ = ["GrpcEventStore", "GrpcHistoryStore", "StoredEvent", "TurnstoreClient"]

T = TypeVar("T")

DEFAULT_TARGET: Final = "127.0.0.1:7070"
# Matches the daemon's limit, so large turns and snapshots come through.
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024


async def _call(make_call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await make_call()
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error) from error


async def _stream(call: Any) -> AsyncIterator[Any]:
    try:
        async for message in call:
            yield message
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error) from error


class GrpcEventStore:
    """:class:`~turnstore.protocols.EventStore` over a turnstore daemon.

    Obtain it as ``client.events``. Every write is acknowledged only after
    the daemon has durably committed it.
    """

    def __init__(self, stub: pb_grpc.EventStoreStub, timeout: float | None) -> None:
        self._stub = stub
        self._timeout = timeout

    async def append(self, thread_id: str, turn: int, envelope: AgentEventEnvelope) -> int:
        """Store ``envelope`` at the end of ``turn``; return its position in the thread."""
        return (await self.append_many(thread_id, turn, [envelope]))[0]

    async def append_many(
        self, thread_id: str, turn: int, envelopes: list[AgentEventEnvelope]
    ) -> list[int]:
        """Store ``envelopes`` at the end of ``turn`` atomically; return their positions.

        Either all are stored or none is. Raises InvalidArgumentError for an
        empty list.
        """
        check_thread_id(thread_id)
        check_turn(turn)
        request = pb.AppendRequest(
            thread_id=thread_id, turn=turn, events=[envelope_to_proto(e) for e in envelopes]
        )
        response = await _call(lambda: self._stub.Append(request, timeout=self._timeout))
        return list(response.positions)

    async def finish_turn(self, thread_id: str, turn: int) -> None:
        """Close ``turn``. A turn never appended to becomes an empty finished turn."""
        check_thread_id(thread_id)
        check_turn(turn)
        request = pb.FinishTurnRequest(thread_id=thread_id, turn=turn)
        await _call(lambda: self._stub.FinishTurn(request, timeout=self._timeout))

    async def get_turn(self, thread_id: str, turn: int) -> StoredTurnEvents | None:
        """The turn, or None for an unknown thread or turn."""
        check_thread_id(thread_id)
        check_turn(turn)
        request = pb.GetTurnRequest(thread_id=thread_id, turn=turn)
        response = await _call(lambda: self._stub.GetTurn(request, timeout=self._timeout))
        if not response.found:
            return None
        return StoredTurnEvents(
            response.turn.turn,
            [envelope_from_proto(event.envelope) for event in response.turn.events],
            response.turn.finished,
        )

    async def get_turns(self, thread_id: str) -> list[StoredTurnEvents]:
        """Every turn in ascending turn order; empty for an unknown thread."""
        check_thread_id(thread_id)
        turns: list[StoredTurnEvents] = []
        call = self._stub.ListTurns(pb.ListTurnsRequest(thread_id=thread_id), timeout=self._timeout)
        async for message in _stream(call):
            piece = message.turn
            events = [envelope_from_proto(event.envelope) for event in piece.events]
            if turns and turns[-1].turn == piece.turn:
                turns[-1].events.extend(events)
            else:
                turns.append(StoredTurnEvents(piece.turn, events, piece.finished))
        return turns

    async def clear(self, thread_id: str) -> None:
        """Remove everything of the thread; a no-op for an unknown thread."""
        check_thread_id(thread_id)
        request = pb.ClearRequest(thread_id=thread_id)
        await _call(lambda: self._stub.Clear(request, timeout=self._timeout))

    async def get_events(self, thread_id: str) -> list[AgentEventEnvelope]:
        """All envelopes, turn by turn in ascending order, each turn in append order."""
        return await self.get_events_since(thread_id, 0)

    async def event_count(self, thread_id: str) -> int:
        """The number of envelopes in the thread (0 for an unknown thread)."""
        check_thread_id(thread_id)
        request = pb.EventCountRequest(thread_id=thread_id)
        response = await _call(lambda: self._stub.EventCount(request, timeout=self._timeout))
        return int(response.count)

    async def get_events_since(self, thread_id: str, offset: int) -> list[AgentEventEnvelope]:
        """The envelopes of :meth:`get_events` after its first ``offset``."""
        return [
            stored.envelope async for stored in self.read_events(thread_id, offset, order="turn")
        ]

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
        async for message in _stream(self._stub.ReadEvents(request, timeout=self._timeout)):
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
        timeout: float | None = None,
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
        return Replay(self._stub.Replay(request, timeout=timeout), after, epoch)

    def appender(self) -> EventAppender:
        """Open a streaming appender (an ``AppendStream``); use it as ``async with``."""
        return EventAppender(self._stub)


class GrpcHistoryStore:
    """:class:`~turnstore.protocols.HistoryStore` for one conversation key.

    Obtain it as ``client.history(key)``. Snapshots are stored as their JSON
    text with content type ``application/json``.
    """

    def __init__(self, stub: pb_grpc.HistoryStoreStub, key: str, timeout: float | None) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError("a conversation key must be a non-empty string")
        self._stub = stub
        self.key = key
        self._timeout = timeout

    async def save(self, snapshot: ConversationSnapshot) -> None:
        """Store ``snapshot`` as a full overwrite of the previous one, durably."""
        await self.save_versioned(snapshot)

    async def save_versioned(self, snapshot: ConversationSnapshot) -> int:
        """Like :meth:`save`, returning the new version (1 for the first save)."""
        request = pb.SaveRequest(key=self.key, data=snapshot.to_json().encode(), content_type=JSON)
        response = await _call(lambda: self._stub.Save(request, timeout=self._timeout))
        return int(response.version)

    async def load(self) -> ConversationSnapshot | None:
        """The latest saved snapshot, or None when nothing was ever saved.

        Raises SnapshotFormatError when the stored data is not a valid
        version-1 snapshot (written by another client, for example).
        """
        request = pb.LoadRequest(key=self.key)
        response = await _call(lambda: self._stub.Load(request, timeout=self._timeout))
        if not response.found:
            return None
        if response.snapshot.content_type not in ("", JSON):
            raise SnapshotFormatError(
                f"snapshot of {self.key!r} is {response.snapshot.content_type!r}, not JSON"
            )
        return ConversationSnapshot.from_json(response.snapshot.data)


class TurnstoreClient:
    """A connection to a turnstore daemon; use as ``async with``.

    ``target`` is ``HOST:PORT`` or ``unix:PATH``. ``timeout`` is the
    deadline in seconds of each unary call and of each whole streaming read
    (None: no deadline). Construct it inside a running event loop. Calls
    made while the daemon is unreachable raise UnavailableError.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 30.0,
        options: list[tuple[str, Any]] | None = None,
    ) -> None:
        self.target = target
        channel_options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            *(options or []),
        ]
        self._channel = grpc.aio.insecure_channel(target, options=channel_options)
        self._timeout = timeout
        self.events = GrpcEventStore(pb_grpc.EventStoreStub(self._channel), timeout)
        self._history_stub = pb_grpc.HistoryStoreStub(self._channel)

    def history(self, key: str) -> GrpcHistoryStore:
        """A HistoryStore bound to the conversation ``key`` (non-empty)."""
        return GrpcHistoryStore(self._history_stub, key, self._timeout)

    async def wait_ready(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until the channel connects; raise UnavailableError after ``timeout``."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except TimeoutError as error:
            raise UnavailableError(f"no turnstore daemon at {self.target!r}") from error

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled. Idempotent."""
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
