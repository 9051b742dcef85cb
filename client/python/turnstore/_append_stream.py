"""The one AppendStream implementation: pipelined items, resent when the stream breaks.

A :class:`RetryingAppendStream` carries append and finish items over one
long-lived ``AppendStream``. The client's trait calls
(``TurnstoreEventStore.append``, ``append_many`` and ``finish_turn``) share
one per client instead of one unary call each: a bare stream message costs
about half a unary round trip, and concurrent callers' items reach the
daemon's writer together and share its commits. Each
:class:`~turnstore.appender.EventAppender` has one of its own.

What a caller sees is what a unary call gives: the positions, or the typed
error of its own item (a rejected item never disturbs the others); its own
deadline; cancellation that touches nobody else. When the stream breaks,
it is reopened after a backoff and every item not yet acknowledged is sent
again, in the order first sent. That is safe: appends are idempotent by
event id, and a resent finish that finds its turn finished is its own
success (its first attempt committed). An item sent on ``retry.attempts``
broken streams fails with the stream's error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from typing import Any, Final

import grpc

from turnstore._retry import RetryPolicy
from turnstore._run_now import run_now
from turnstore._status import ERROR_METADATA_KEY, error_from_item, error_from_rpc
from turnstore.errors import (
    DeadlineExceededError,
    TurnAlreadyFinishedError,
    TurnstoreError,
    UnavailableError,
    VersionConflictError,
)
from turnstore.v1 import turnstore_pb2 as pb

__all__ = ["RetryingAppendStream"]


# Items, events and bytes in one stream message: ready items travel
# together. The events bound stays under the smallest per-message limit a
# daemon may be configured with (--max-events-per-stream-message).
MAX_ITEMS_PER_MESSAGE: Final = 1024
MAX_EVENTS_PER_MESSAGE: Final = 32_768
MAX_BYTES_PER_MESSAGE: Final = 4 * 1024 * 1024
# The tag of AppendStreamRequest.more (field 6, length-delimited).
_MORE_TAG: Final = bytes([6 << 3 | 2])


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _message(items: list[_Item]) -> bytes:
    """One AppendStreamRequest carrying ``items``: the first, the rest in ``more``."""
    parts = [items[0].data]
    for item in items[1:]:
        parts += (_MORE_TAG, _varint(len(item.data)), item.data)
    return b"".join(parts)


def _expire(future: asyncio.Future[list[int]], timeout: float) -> None:
    if not future.done():
        future.set_exception(
            DeadlineExceededError(
                f"no acknowledgement within {timeout} s; the write may still take effect"
            )
        )


def _transient(error: grpc.aio.AioRpcError) -> bool:
    """Whether a broken stream is worth reopening: the daemon or the transport went away.

    Besides UNAVAILABLE, gRPC reports a connection lost mid-stream as
    CANCELLED or as INTERNAL without the daemon's reason metadata; an INTERNAL
    the daemon sent carries its ``turnstore-error`` reason.
    """
    code = error.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return True
    reasons = [key for key, _ in error.trailing_metadata() or () if key == ERROR_METADATA_KEY]
    return code == grpc.StatusCode.INTERNAL and not reasons


class _Item:
    """One caller's request, from its first send until its acknowledgement."""

    __slots__ = ("data", "events", "finish_only", "future", "generation", "request_id", "sends")

    def __init__(self, request: pb.AppendStreamRequest, future: asyncio.Future[list[int]]) -> None:
        self.request_id = request.request_id
        self.data: bytes = request.SerializeToString()
        self.events = len(request.events)
        self.finish_only = request.finish_turn and not request.events
        self.future = future
        # The stream it was last written to (0: never written).
        self.generation = 0
        self.sends = 0


class RetryingAppendStream:
    """One ``AppendStream``, reopened when it breaks, shared by every task that uses it.

    ``open_call`` opens a new stream whose requests are bytes in wire form
    (:meth:`open_call_of`). Create it on the event loop that uses it; the
    stream is opened on the first item. ``closed_message`` is the text of the
    UnavailableError that :meth:`aclose` gives to items still pending and to
    later calls.
    """

    def __init__(
        self,
        open_call: Callable[[], Any],
        retry: RetryPolicy,
        closed_message: str = "the client was closed",
    ) -> None:
        self._open_call = open_call
        self._closed_message = closed_message
        self._retry = retry
        # Items not yet acknowledged, by request id, in the order first sent.
        self._pending: dict[int, _Item] = {}
        self._next_id = 1
        self._call: Any = None
        self._generation = 0
        # Items to write, in order. The caller whose item finds no write in
        # flight starts one (_write_next), which writes the next batch when
        # it completes: one write at a time, none awaited by a caller, so a
        # caller cancelled mid-write cannot leave a write half done.
        self._outbox: collections.deque[_Item] = collections.deque()
        self._writing = False
        # How many acknowledgements the daemon's last message carried. More
        # than one: that many callers wake in one loop pass, and their next
        # items go out together in a write started at the end of the pass
        # (_write_soon); one: the item goes out at once, in its caller's step.
        self._last_acks = 0
        self._write_soon_scheduled = False
        self._reader: asyncio.Task[None] | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self._failures = 0
        self._closed: TurnstoreError | None = None

    @staticmethod
    def open_call_of(channel: grpc.aio.Channel) -> Callable[[], Any]:
        """The ``open_call`` of a channel: AppendStream with requests in wire form."""
        open_call: Callable[[], Any] = channel.stream_stream(
            "/turnstore.v1.EventStoreService/AppendStream",
            request_serializer=bytes,
            response_deserializer=pb.AppendStreamResponse.FromString,
        )
        return open_call

    def submit(self, request: pb.AppendStreamRequest) -> asyncio.Future[list[int]]:
        """Queue ``request`` (without its request id); return a future of its positions.

        The future has no deadline. It fails with the item's own error, or
        with the stream's error once the item was sent on ``retry.attempts``
        broken streams (or on one that broke for good: a refused token, say).
        A future cancelled or failed by its holder before its item was written
        is never written. Raises UnavailableError at once after :meth:`aclose`.
        """
        return self._enqueue(request).future

    async def send(
        self,
        request: pb.AppendStreamRequest,
        timeout: float | None,  # noqa: ASYNC109 (the call's deadline, like a unary call's)
    ) -> list[int]:
        """Send ``request`` (without its request id) and await its acknowledgement.

        Returns the positions of its events. Raises its own item's error, or
        DeadlineExceededError after ``timeout`` seconds (the item may still
        commit, as with a unary call), or UnavailableError once the stream
        could not be reopened within the retry policy. Cancelling the caller
        withdraws the item if it was not written yet.
        """
        item = self._enqueue(request)
        future = item.future
        # A timer on the future itself: asyncio.wait_for would add a second
        # future and two callbacks to every call.
        deadline = (
            None
            if timeout is None
            else asyncio.get_running_loop().call_later(timeout, _expire, future, timeout)
        )
        try:
            return await future
        finally:
            if deadline is not None:
                deadline.cancel()
            # Acknowledged, failed, timed out or cancelled: never sent again.
            self._pending.pop(item.request_id, None)

    def _enqueue(self, request: pb.AppendStreamRequest) -> _Item:
        if self._closed is not None:
            raise self._closed
        request.request_id = self._next_id
        request.acks_in_more = True
        self._next_id += 1
        item = _Item(request, asyncio.get_running_loop().create_future())
        self._pending[item.request_id] = item
        if self._reconnect is None:
            self._outbox.append(item)
            if self._last_acks > 1:
                self._write_soon()
            else:
                self._write_next()
        return item

    async def drain(self) -> None:
        """Wait until every item queued so far is acknowledged, rejected or given up."""
        waiting = [item.future for item in self._pending.values() if not item.future.done()]
        if waiting:
            # asyncio.wait, not gather: a cancelled drain must not cancel the items.
            await asyncio.wait(waiting)

    def _write_next(self) -> None:
        """Start writing the next batch of the outbox, unless a write is in flight.

        The write starts in the calling step (:func:`run_now`) and, when it
        completes, starts the next one, so items queued meanwhile travel
        together. During a reconnect's backoff nothing is written: the
        reconnect refills the outbox and calls this again.
        """
        if self._writing:
            return
        while self._outbox and self._closed is None and self._reconnect is None:
            batch = self._take_batch()
            if not batch:
                continue
            if self._call is None:
                self._open()
            call, generation = self._call, self._generation
            for item in batch:
                item.generation = generation
                item.sends += 1
            self._writing = True
            run_now(call.write(_message(batch)), self._written)
            return

    def _write_soon(self) -> None:
        """Start the next write at the end of this loop pass, after the callers woken in it."""
        if not self._writing and not self._write_soon_scheduled:
            self._write_soon_scheduled = True
            asyncio.get_running_loop().call_soon(self._write_soon_now)

    def _write_soon_now(self) -> None:
        self._write_soon_scheduled = False
        self._write_next()

    def _written(self, error: BaseException | None) -> None:
        # A failed write means the stream broke: its reader sees why and
        # resends what is pending, the failed write's batch included.
        self._writing = False
        try:
            if error is not None and not isinstance(
                error, grpc.RpcError | asyncio.InvalidStateError | asyncio.CancelledError
            ):
                raise error  # a bug: to the loop's exception handler
        finally:
            self._write_next()

    def _take_batch(self) -> list[_Item]:
        """The next items to send together, skipping those whose callers are gone."""
        batch: list[_Item] = []
        size = events = 0
        outbox = self._outbox
        while outbox and len(batch) < MAX_ITEMS_PER_MESSAGE:
            item = outbox[0]
            if item.future.done():
                outbox.popleft()
                self._pending.pop(item.request_id, None)  # withdrawn before it was written
                continue
            size += len(item.data) + 8
            events += item.events
            if batch and (size > MAX_BYTES_PER_MESSAGE or events > MAX_EVENTS_PER_MESSAGE):
                break
            batch.append(outbox.popleft())
        return batch

    def _open(self) -> None:
        self._generation += 1
        self._call = call = self._open_call()
        self._reader = asyncio.ensure_future(self._read_acks(call, self._generation))

    async def _read_acks(self, call: Any, generation: int) -> None:
        failure: TurnstoreError
        try:
            async for response in call:
                self._failures = 0
                self._last_acks = 1 + len(response.more)
                self._acknowledge(response)
                for more in response.more:
                    self._acknowledge(more)
            failure = UnavailableError("the append stream ended")
            transient = True
        except grpc.aio.AioRpcError as error:
            failure = error_from_rpc(error)
            transient = _transient(error)
        except asyncio.CancelledError:
            return  # closing
        if self._call is call:
            self._call = None
        self._broken(generation, failure, transient)

    def _acknowledge(self, response: pb.AppendStreamResponse) -> None:
        item = self._pending.pop(response.request_id, None)
        if item is None or item.future.done():
            return  # timed out or cancelled: its caller is gone
        if response.HasField("error"):
            error = response.error
            mapped = error_from_item(error.code, error.reason, error.message)
            if isinstance(mapped, VersionConflictError) and error.HasField("current_version"):
                mapped.current_version = error.current_version
            if isinstance(mapped, TurnAlreadyFinishedError) and item.sends > 1 and item.finish_only:
                item.future.set_result([])  # its first attempt committed
            else:
                item.future.set_exception(mapped)
        else:
            item.future.set_result(list(response.positions))

    def _broken(self, generation: int, failure: TurnstoreError, transient: bool) -> None:
        """Charge the items sent on the broken stream; resend the rest after a backoff."""
        retryable = transient and self._closed is None
        for item in list(self._pending.values()):
            if item.future.done():
                # Its holder gave up on it (a deadline, a cancelled future).
                del self._pending[item.request_id]
            elif item.generation == generation and (
                not retryable or item.sends >= self._retry.attempts
            ):
                item.future.set_exception(failure)
                del self._pending[item.request_id]
        if self._pending:
            self._failures += 1
            if self._reconnect is None:
                self._reconnect = asyncio.ensure_future(self._resend_after_backoff())

    async def _resend_after_backoff(self) -> None:
        try:
            await asyncio.sleep(self._retry.delay(self._failures))
        finally:
            self._reconnect = None
        # Everything pending goes out again in the order first sent: items
        # queued during the backoff are pending too, after the older ones.
        self._outbox = collections.deque(
            item for item in self._pending.values() if not item.future.done()
        )
        if self._outbox:
            self._write_next()

    async def aclose(self, *, half_close: bool = False) -> None:
        """Fail what is pending with UnavailableError and close the stream. Idempotent.

        With ``half_close`` (after :meth:`drain`), the stream is ended the
        polite way: the end of the requests is sent and the daemon's end of
        the stream awaited, instead of cancelling it.
        """
        if self._closed is None:
            self._closed = UnavailableError(self._closed_message)
        for item in list(self._pending.values()):
            if not item.future.done():
                item.future.set_exception(self._closed)
        self._pending.clear()
        call, reader = self._call, self._reader
        if half_close and call is not None and reader is not None:
            with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
                await call.done_writing()
            await asyncio.gather(reader, return_exceptions=True)
        tasks = [task for task in (self._reader, self._reconnect) if task]
        for task in tasks:
            task.cancel()
        if self._call is not None:
            self._call.cancel()
            self._call = None
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
