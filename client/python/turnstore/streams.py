"""Streaming replay and streaming appends over the EventStore service.

:class:`Replay` is an async iterator of :data:`ReplayItem`\\ s: stored events
and the markers of the replay stream. :class:`EventAppender` keeps one
``AppendStream`` open and pipelines appends over it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc

from turnstore._convert import fill_envelope
from turnstore._retry import NO_RETRY, RetryPolicy
from turnstore._status import error_from_item, error_from_rpc
from turnstore._validate import check_thread_id, check_turn
from turnstore.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    TurnstoreError,
    UnavailableError,
)
from turnstore.models import AgentEventEnvelope
from turnstore.results import StoredEvent
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

__all__ = [
    "CaughtUp",
    "EventAppender",
    "Replay",
    "ReplayItem",
    "ThreadCleared",
    "TurnFinished",
]


@dataclass(frozen=True)
class TurnFinished:
    """Marker: ``turn`` was finished, holding ``event_count`` events.

    ``last_position`` is the position of its last event (None for an empty
    turn). It comes after every event of the turn.
    """

    turn: int
    event_count: int
    last_position: int | None


@dataclass(frozen=True)
class CaughtUp:
    """Marker, sent once: everything stored when the replay caught up was delivered.

    ``next_position`` is the position the next event will get.
    """

    next_position: int


@dataclass(frozen=True)
class ThreadCleared:
    """Marker: the thread was cleared under the replay; the replay ends.

    Also the answer to a resume whose ``epoch`` is not the thread's current
    one: the thread was cleared, or the database restored from a backup,
    since that cursor was handed out. Replay from the start to read the
    thread as it is now.
    """

    next_position: int


ReplayItem = StoredEvent | TurnFinished | CaughtUp | ThreadCleared


class Replay:
    """One replay of a thread: ``async for item in replay``, or ``async with``.

    It yields :class:`StoredEvent`\\ s in position order and the markers
    :class:`TurnFinished`, :class:`CaughtUp` and :class:`ThreadCleared`.
    ``last_position`` is the position of the last event yielded (None
    before any) and ``epoch`` the thread's epoch: pass both to
    ``TurnstoreEventStore.replay(after=..., epoch=...)`` to resume after a
    disconnect with nothing missed and nothing repeated. Errors are
    :class:`~turnstore.errors.TurnstoreError`\\ s; leaving ``async with`` (or
    :meth:`aclose`) cancels the stream. A replay that fails with
    UnavailableError before it yielded anything is started again by the
    client's retry policy; once it yielded an item it is not (resume from
    the cursor instead).
    """

    def __init__(
        self,
        call: Any,
        after: int | None,
        epoch: int | None,
        *,
        restart: Callable[[], Any] | None = None,
        retry: RetryPolicy = NO_RETRY,
    ) -> None:
        self._call = call
        self._restart = restart
        self._retry = retry
        self._closed = False
        self.last_position = after
        self.epoch = epoch

    def __aiter__(self) -> AsyncIterator[ReplayItem]:
        return self._items()

    async def _items(self) -> AsyncIterator[ReplayItem]:
        # A replay that fails with UnavailableError before its first item is
        # started again (``restart``) per the retry policy: nothing was
        # delivered, so nothing can be repeated. Once an item was yielded it
        # is not: resuming exactly once is the reader's cursor's job.
        yielded = False
        delays = iter(self._retry.delays())
        while True:
            try:
                async for message in self._call:
                    if message.thread_epoch:
                        self.epoch = message.thread_epoch
                    for item in _items_of(message):
                        if isinstance(item, StoredEvent):
                            self.last_position = item.position
                        yielded = True
                        yield item
                return
            except grpc.aio.AioRpcError as error:
                mapped = error_from_rpc(error)
                delay = next(delays, None)
                if (
                    yielded
                    or self._restart is None
                    or self._closed
                    or delay is None
                    or not isinstance(mapped, UnavailableError)
                ):
                    raise mapped from error
            await asyncio.sleep(delay)
            if self._closed:
                return
            self._call = self._restart()

    async def aclose(self) -> None:
        """Cancel the stream (and any retry still to come). Idempotent."""
        self._closed = True
        self._call.cancel()

    async def __aenter__(self) -> Replay:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _items_of(message: pb.ReplayResponse) -> list[ReplayItem]:
    """The items of one replay message, in the order the contract gives them."""
    items: list[ReplayItem] = [StoredEvent.from_proto(event) for event in message.events]
    for finished in message.finished_turns:
        last = finished.last_position if finished.HasField("last_position") else None
        items.append(TurnFinished(finished.turn, finished.event_count, last))
    if message.caught_up:
        items.append(CaughtUp(message.next_position))
    if message.thread_cleared:
        items.append(ThreadCleared(message.next_position))
    return items


def replay_request(
    thread_id: str,
    after: int | None,
    *,
    follow: bool,
    from_turn: int | None,
    to_turn: int | None,
    event_types: Sequence[str] | None,
    until_turn_finished: int | None,
    epoch: int | None,
    max_events_per_message: int,
) -> pb.ReplayRequest:
    """Check replay arguments and build the request."""
    check_thread_id(thread_id)
    for name, value in (
        ("after", after),
        ("from_turn", from_turn),
        ("to_turn", to_turn),
        ("until_turn_finished", until_turn_finished),
        ("epoch", epoch),
    ):
        if value is not None:
            check_turn(value, name)
    if isinstance(event_types, str):
        raise InvalidArgumentError("event_types: must be a sequence of strings, not a string")
    request = pb.ReplayRequest(
        thread_id=thread_id,
        follow=follow,
        event_types=list(event_types or ()),
        thread_epoch=epoch or 0,
        max_events_per_message=max_events_per_message,
    )
    if after is not None:
        request.after_position = after
    if from_turn is not None:
        request.from_turn = from_turn
    if to_turn is not None:
        request.to_turn = to_turn
    if until_turn_finished is not None:
        request.until_turn_finished = until_turn_finished
    return request


class EventAppender:
    """Appends pipelined over one ``AppendStream``; use as ``async with``.

    :meth:`submit` sends an item and returns at once with a future of its
    positions; :meth:`append` and :meth:`finish_turn` wait for their own
    acknowledgement. Acknowledgements arrive in the order sent, each after a
    durable commit. A rejected item fails only its own future (with
    ``TurnFinishedError``, ``InvalidArgumentError``, ...); the stream goes
    on. If the stream breaks, every pending future fails with
    ``UnavailableError`` (or the stream's error), and so does every later
    call. :meth:`append` and :meth:`finish_turn` raise
    ``DeadlineExceededError`` when not acknowledged within ``timeout``
    seconds (None: no deadline); the stream stays open and the item may still
    take effect. Leaving ``async with`` waits for all acknowledgements.
    """

    def __init__(
        self,
        stub: pb_grpc.EventStoreServiceStub,
        timeout: float | None = None,
    ) -> None:
        self._timeout = timeout
        self._call = stub.AppendStream()
        self._pending: collections.deque[asyncio.Future[list[int]]] = collections.deque()
        self._write_lock = asyncio.Lock()
        self._next_id = 0
        self._broken: TurnstoreError | None = None
        self._reader = asyncio.ensure_future(self._read_acks())

    async def _read_acks(self) -> None:
        try:
            async for response in self._call:
                self._acknowledge(response)
                for more in response.more:
                    self._acknowledge(more)
            failure: TurnstoreError = UnavailableError("the append stream ended")
        except grpc.aio.AioRpcError as error:
            failure = error_from_rpc(error)
        except asyncio.CancelledError:
            failure = UnavailableError("the append stream was closed")
        self._broken = failure
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(failure)

    def _acknowledge(self, response: pb.AppendStreamResponse) -> None:
        future = self._pending.popleft()
        if future.done():
            return
        if response.HasField("error"):
            error = response.error
            future.set_exception(error_from_item(error.code, error.reason, error.message))
        else:
            future.set_result(list(response.positions))

    async def submit(
        self,
        thread_id: str,
        turn: int,
        envelopes: Sequence[AgentEventEnvelope],
        *,
        finish: bool = False,
    ) -> asyncio.Future[list[int]]:
        """Send one item; return a future of its events' positions.

        ``envelopes`` are appended atomically to ``turn``; with ``finish`` the
        turn is then finished in the same commit (``envelopes`` may then be
        empty). Raises at once for invalid arguments or a broken stream.
        """
        check_thread_id(thread_id)
        check_turn(turn)
        if not envelopes and not finish:
            raise InvalidArgumentError("events: must hold at least one event")
        if self._broken is not None:
            raise self._broken
        request = pb.AppendStreamRequest(
            thread_id=thread_id, turn=turn, finish_turn=finish, acks_in_more=True
        )
        add = request.events.add
        for envelope in envelopes:
            fill_envelope(add(), envelope)
        async with self._write_lock:
            if self._broken is not None:
                raise self._broken
            request.request_id = self._next_id
            self._next_id += 1
            future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
            self._pending.append(future)
            try:
                await self._call.write(request)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
                self._pending.remove(future)
                raise UnavailableError(f"the append stream is broken: {error}") from error
        return future

    async def append(self, thread_id: str, turn: int, envelope: AgentEventEnvelope) -> int:
        """Append one envelope and wait for its durable acknowledgement (or its deadline)."""
        return (await self._acknowledged(await self.submit(thread_id, turn, [envelope])))[0]

    async def finish_turn(self, thread_id: str, turn: int) -> None:
        """Finish ``turn`` after every item sent before, and wait for it (or its deadline)."""
        await self._acknowledged(await self.submit(thread_id, turn, [], finish=True))

    async def _acknowledged(self, future: asyncio.Future[list[int]]) -> list[int]:
        if self._timeout is None:
            return await future
        # Shielded: the item stays in the stream's order of acknowledgements.
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._timeout)
        except TimeoutError as error:
            # Its outcome is nobody's now; retrieving it keeps asyncio quiet.
            future.add_done_callback(lambda done: done.cancelled() or done.exception())
            raise DeadlineExceededError(
                f"no acknowledgement within {self._timeout} s; the write may still take effect"
            ) from error

    async def flush(self) -> None:
        """Wait until every item sent so far is acknowledged or rejected."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def close(self) -> None:
        """Half-close the stream after waiting for every acknowledgement."""
        await self.flush()
        async with self._write_lock:
            if self._broken is None:
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    await self._call.done_writing()
        await self._reader

    async def __aenter__(self) -> EventAppender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.close()
        else:
            self._call.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
