"""Replaying a thread: the ``Replay`` stream, its items and its request.

:class:`Replay` is an async iterator of :data:`ReplayItem`\\ s: stored events
and the markers of the replay stream (:class:`TurnFinished`,
:class:`CaughtUp`, :class:`ThreadCleared`). ``TurnstoreEventStore.replay``
makes one; :func:`replay_request` checks its arguments.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc

from turnstore._convert import RowsFormatError, rows_with_envelopes
from turnstore._retry import NO_RETRY, RetryPolicy
from turnstore._status import error_from_rpc
from turnstore._validate import check_thread_id, check_turn
from turnstore.errors import (
    InvalidArgumentError,
    UnavailableError,
)
from turnstore.results import StoredEvent
from turnstore.v1 import turnstore_pb2 as pb

__all__ = [
    "CaughtUp",
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
        resume_as_messages: Callable[[int | None, int | None], Any] | None = None,
    ) -> None:
        self._call = call
        self._restart = restart
        self._retry = retry
        self._resume_as_messages = resume_as_messages
        self._closed = False
        self.last_position = after
        self.epoch = epoch
        # Markers yielded since the last event, and whether CaughtUp was:
        # what a resume from the cursor may send again (see _resume).
        self._finished_since_event: set[int] = set()
        self._caught_up = False

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
                    try:
                        items = _items_of(message)
                    except RowsFormatError:
                        self._resume()
                        break
                    for item in items:
                        if isinstance(item, StoredEvent):
                            self.last_position = item.position
                            self._finished_since_event.clear()
                        elif isinstance(item, TurnFinished):
                            if item.turn in self._finished_since_event:
                                continue
                            self._finished_since_event.add(item.turn)
                        elif isinstance(item, CaughtUp):
                            if self._caught_up:
                                continue
                            self._caught_up = True
                        yielded = True
                        yield item
                else:
                    return
                continue
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

    def _resume(self) -> None:
        # A JSON rows message this client cannot parse (a body stored before
        # the daemon checked bodies): go on from the cursor as StoredEvent
        # messages, where the bad event fails alone, on first `.envelope`.
        # Resuming after the last event may send again the finish markers
        # yielded since it, and CaughtUp: those are dropped above.
        if self._resume_as_messages is None:
            raise RowsFormatError("a replay message cannot be decoded")
        self._call.cancel()
        self._call = self._resume_as_messages(self.last_position, self.epoch)
        self._restart = None

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
    items: list[ReplayItem]
    if message.events_json:
        items = [
            StoredEvent(position, turn, stored_at, envelope)
            for position, turn, stored_at, envelope in rows_with_envelopes(message.events_json)
        ]
    else:
        items = [StoredEvent.from_proto(event) for event in message.events]
    for finished in message.finished_turns:
        last = finished.last_position if finished.HasField("last_position") else None
        items.append(TurnFinished(finished.turn, finished.event_count, last))
    if message.caught_up:
        items.append(CaughtUp(message.next_position))
    if message.thread_cleared:
        items.append(ThreadCleared(message.next_position))
    return items


def start_replay(
    call: Callable[..., Any],
    request: pb.ReplayRequest,
    after: int | None,
    epoch: int | None,
    timeout: float | None,
    retry: RetryPolicy,
) -> Replay:
    """A :class:`Replay` of ``request`` through the stub's ``Replay`` method ``call``.

    ``timeout`` (None: none) bounds the whole replay, retries and a resume
    as StoredEvent messages included.
    """
    loop = asyncio.get_running_loop()
    ends_at = None if timeout is None else loop.time() + timeout

    def left() -> float | None:
        return None if ends_at is None else max(ends_at - loop.time(), 0.0)

    def restart() -> Any:
        return call(request, timeout=left())

    def resume_as_messages(last_position: int | None, last_epoch: int | None) -> Any:
        resumed = pb.ReplayRequest()
        resumed.CopyFrom(request)
        resumed.encoding = pb.EVENT_ENCODING_UNSPECIFIED
        if last_position is not None:
            resumed.after_position = last_position
        resumed.thread_epoch = last_epoch or 0
        return call(resumed, timeout=left())

    return Replay(
        restart(),
        after,
        epoch,
        restart=restart,
        retry=retry,
        resume_as_messages=resume_as_messages,
    )


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
    decode: bool = False,
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
        encoding=pb.EVENT_ENCODING_JSON_ROWS if decode else pb.EVENT_ENCODING_UNSPECIFIED,
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
