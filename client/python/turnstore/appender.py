"""Pipelined appends: :class:`EventAppender`, an ``AppendStream`` of one's own.

``client.events.appender()`` opens one. It is the client's one append-stream
implementation (:mod:`turnstore._append_stream`) with the same retrying: when
the stream breaks it is reopened and every item not yet acknowledged is sent
again, in the order first sent, which is safe because appends are
idempotent by event id. What it adds is the pipelining: :meth:`EventAppender.submit`
returns before the acknowledgement.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Final

from turnstore._append_stream import RetryingAppendStream
from turnstore._convert import fill_envelope
from turnstore._retry import RetryPolicy
from turnstore._validate import check_thread_id, check_turn
from turnstore.errors import InvalidArgumentError
from turnstore.models import AgentEventEnvelope
from turnstore.v1 import turnstore_pb2 as pb

__all__ = ["EventAppender"]

# How far :meth:`EventAppender.submit` runs ahead of the acknowledgements:
# past this many items (or bytes) not yet acknowledged, it waits for the
# oldest, so a producer faster than the daemon cannot fill the memory.
MAX_UNACKNOWLEDGED_ITEMS: Final = 4096
MAX_UNACKNOWLEDGED_BYTES: Final = 16 * 1024 * 1024


class EventAppender:
    """Appends pipelined over one ``AppendStream`` of its own; use as ``async with``.

    :meth:`submit` sends an item and returns with a future of its positions;
    :meth:`append` and :meth:`finish_turn` wait for their own
    acknowledgement. Acknowledgements come in the order sent, each after a
    durable commit. A rejected item fails only its own future (with
    ``TurnFinishedError``, ``InvalidArgumentError``, ...); the stream goes
    on. When the stream breaks (the daemon restarting, say) it is reopened
    per the client's retry policy and every item not yet acknowledged is
    sent again, in order: an event is never stored twice (appends are
    idempotent by event id) and a finish that finds its turn finished by its
    own first attempt succeeds. An item sent on ``retry.attempts`` broken
    streams, or on one broken for good (a refused token), fails with the
    stream's error; later items open a new stream.

    :meth:`append` and :meth:`finish_turn` raise ``DeadlineExceededError``
    when not acknowledged within ``timeout`` seconds (None: no deadline);
    the stream stays open and the item may still take effect. Leaving
    ``async with`` normally (or :meth:`aclose`) waits for every
    acknowledgement; leaving it with an exception fails what is still
    pending with ``UnavailableError``. Either way, later calls raise
    ``UnavailableError``.
    """

    def __init__(
        self,
        open_call: Callable[[], Any],
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._timeout = timeout
        self._stream = RetryingAppendStream(
            open_call, retry or RetryPolicy(), "the appender was closed"
        )
        # Submitted futures not known to be done, oldest first, with their sizes.
        self._unacknowledged: collections.deque[tuple[asyncio.Future[list[int]], int]] = (
            collections.deque()
        )
        self._unacknowledged_bytes = 0

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
        empty). Raises at once for invalid arguments or a closed appender.
        Waits first while :data:`MAX_UNACKNOWLEDGED_ITEMS` items (or
        :data:`MAX_UNACKNOWLEDGED_BYTES`) are not yet acknowledged. The
        future has no deadline; cancelling it withdraws the item if it was
        not written yet.
        """
        request = _request(thread_id, turn, envelopes, finish)
        await self._make_room()
        future = self._stream.submit(request)
        size = request.ByteSize()
        self._unacknowledged.append((future, size))
        self._unacknowledged_bytes += size
        # A yield to the loop, as an awaited send promises (the write itself
        # started in submit, unless one was in flight).
        await asyncio.sleep(0)
        return future

    async def _make_room(self) -> None:
        queue = self._unacknowledged
        while queue:
            future, size = queue[0]
            full = (
                len(queue) >= MAX_UNACKNOWLEDGED_ITEMS
                or self._unacknowledged_bytes >= MAX_UNACKNOWLEDGED_BYTES
            )
            if not future.done() and not full:
                return
            if not future.done():
                await asyncio.wait([future])  # not gather: waiting must not cancel it
            queue.popleft()
            self._unacknowledged_bytes -= size

    async def append(self, thread_id: str, turn: int, envelope: AgentEventEnvelope) -> int:
        """Append one envelope and wait for its durable acknowledgement (or its deadline)."""
        request = _request(thread_id, turn, [envelope], False)
        return (await self._stream.send(request, self._timeout))[0]

    async def finish_turn(self, thread_id: str, turn: int) -> None:
        """Finish ``turn`` after every item sent before, and wait for it (or its deadline)."""
        await self._stream.send(_request(thread_id, turn, [], True), self._timeout)

    async def flush(self) -> None:
        """Wait until every item sent so far is acknowledged or rejected."""
        await self._stream.drain()

    async def aclose(self) -> None:
        """Wait for every acknowledgement, then end the stream. Idempotent."""
        await self.flush()
        await self._stream.aclose(half_close=True)

    async def __aenter__(self) -> EventAppender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.aclose()
        else:
            await self._stream.aclose()


def _request(
    thread_id: str, turn: int, envelopes: Sequence[AgentEventEnvelope], finish: bool
) -> pb.AppendStreamRequest:
    """Check one item's arguments and build its request (without its request id)."""
    check_thread_id(thread_id)
    check_turn(turn)
    if not envelopes and not finish:
        raise InvalidArgumentError("events: must hold at least one event")
    request = pb.AppendStreamRequest(thread_id=thread_id, turn=turn, finish_turn=finish)
    add = request.events.add
    for envelope in envelopes:
        fill_envelope(add(), envelope)
    return request
