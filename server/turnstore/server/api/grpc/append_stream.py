"""``EventStoreService.AppendStream``: many appends on one stream, acknowledged in order.

Items are submitted as they arrive (so they share commits) and acknowledged
in order, the acknowledgements that are ready together in one message. A
window stops reading requests when too many messages await their commit. At
shutdown a stream ends once what it submitted is acknowledged, so the daemon
need not wait out its grace period for a writer that keeps its stream open.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import Executor, Future
from typing import Any, Final

from turnstore.server.api.grpc.envelopes import convert_items, new_events
from turnstore.server.api.grpc.ingress import RawRequest
from turnstore.server.api.grpc.servicer import status_for
from turnstore.server.api.grpc.wire_scan import RefusedRequest
from turnstore.server.replay.acks import AckPump
from turnstore.server.replay.followers import Followers
from turnstore.server.storage.errors import (
    DaemonError,
    EngineClosedError,
    InvalidArgumentError,
    VersionConflictError,
)
from turnstore.server.storage.interface import StorageEngine
from turnstore.v1 import turnstore_pb2 as pb

# AppendStream messages accepted but not yet acknowledged, per stream.
APPEND_STREAM_WINDOW: Final = 1024
# Items in one AppendStream message (the first and those in `more`).
MAX_ITEMS_PER_MESSAGE: Final = 4096

# One AppendStream message's items: (request id, engine future or error, acks_in_more).
_Group = list[tuple[int, Any, bool]]


def _item_error(error: DaemonError) -> pb.ItemError:
    code = status_for(error)
    item = pb.ItemError(code=code.value[0], reason=error.reason, message=str(error))
    if isinstance(error, VersionConflictError):  # a conditional append's: the next position
        item.current_version = error.current_version
    return item


def _ready(group: _Group) -> bool:
    """Whether every item of a queued message has its outcome."""
    return all(not isinstance(o, Future) or o.done() for _, o, _ in group)


def _acknowledge(group: _Group) -> list[pb.AppendStreamResponse]:
    """The acknowledgements of a message whose items are all :func:`_ready`, in order.

    Raises what an engine future failed with when that is not a DaemonError
    (an engine bug: the stream ends with it, as before).
    """
    acks = []
    for request_id, outcome, _ in group:
        if isinstance(outcome, Future):
            error = outcome.exception()
            if error is None:
                result = outcome.result()
                if isinstance(result, int):  # a bare finish: the turn's event count
                    acks.append(pb.AppendStreamResponse(request_id=request_id, event_count=result))
                else:
                    acks.append(pb.AppendStreamResponse(request_id=request_id, positions=result))
                continue
            if not isinstance(error, DaemonError):
                raise error
            outcome = error
        acks.append(pb.AppendStreamResponse(request_id=request_id, error=_item_error(outcome)))
    return acks


class AppendStreams:
    """The daemon's AppendStreams: each served by :meth:`serve`, all ended by :meth:`end_all`."""

    def __init__(self, executor: Executor, followers: Followers, acks: AckPump) -> None:
        self._executor = executor
        self._followers = followers
        self._acks = acks
        # The request readers of the open AppendStreams (ended at shutdown).
        self._submitters: set[asyncio.Task[None]] = set()

    async def serve(
        self, engine: StorageEngine, request_iterator: AsyncIterator[pb.AppendStreamRequest]
    ) -> AsyncGenerator[pb.AppendStreamResponse, None]:
        """The acknowledgements of one stream's requests, written to ``engine`` (in its scope)."""
        pending: collections.deque[_Group | BaseException | None] = collections.deque()
        # Set when the oldest pending entry can be acknowledged (or ends the
        # stream): the handler wakes once per message, when its commit is
        # delivered, not also when it arrives.
        arrived = asyncio.Event()
        window = asyncio.Semaphore(APPEND_STREAM_WINDOW)

        def head_ready(_: object = None) -> None:
            if pending and (not isinstance(pending[0], list) or _ready(pending[0])):
                arrived.set()

        def put(entry: _Group | BaseException | None) -> None:
            pending.append(entry)
            if isinstance(entry, list):
                futures = [outcome for _, outcome, _ in entry if isinstance(outcome, Future)]
                # The message's futures left to resolve; the last one checks
                # the oldest message (once per message, not once per item).
                left = [len(futures)]

                def resolved(_: object) -> None:
                    left[0] -= 1
                    if not left[0]:
                        head_ready()

                for future in futures:
                    # Run on the loop in the wake-up that delivers the commit.
                    future.add_done_callback(lambda _: self._acks.call_soon(resolved, None))
            head_ready()

        max_events = engine.limits.max_events_per_append
        loop = asyncio.get_running_loop()

        async def submit_all() -> None:
            try:
                async for message in request_iterator:
                    converted = None
                    if isinstance(message, RawRequest):  # large: decoded and converted off the loop
                        message = await message.decode()  # raises for a message over the limits
                        converted = await loop.run_in_executor(
                            self._executor, convert_items, message, max_events
                        )
                    await window.acquire()
                    put(self._submit_items(engine, message, converted))
            except asyncio.CancelledError:  # shutdown (or the call ended)
                put(EngineClosedError("the daemon is shutting down"))
                raise
            except Exception as error:  # the request stream broke
                put(error)
            put(None)

        submitter = asyncio.create_task(submit_all())
        self._submitters.add(submitter)
        acks_in_more = False
        try:
            while True:
                while not pending or (isinstance(pending[0], list) and not _ready(pending[0])):
                    if not pending and self._followers.closing:
                        raise EngineClosedError("the daemon is shutting down")
                    arrived.clear()
                    await arrived.wait()
                entry = pending.popleft()
                if not isinstance(entry, list):
                    if entry is not None:
                        raise entry
                    return
                acks = _acknowledge(entry)
                window.release()
                acks_in_more = acks_in_more or entry[0][2]
                if not acks_in_more:
                    for ack in acks:
                        yield ack
                    continue
                # Messages whose items are all committed go in the same reply.
                while pending and isinstance(pending[0], list) and _ready(pending[0]):
                    acks += _acknowledge(pending.popleft())  # type: ignore[arg-type]
                    window.release()
                response = acks[0]
                response.more.extend(acks[1:])
                yield response
        finally:
            self._submitters.discard(submitter)
            submitter.cancel()

    def end_all(self) -> None:
        """Stop reading every AppendStream; each ends once its items are acknowledged."""
        for submitter in list(self._submitters):
            submitter.cancel()

    def _submit_items(
        self, engine: StorageEngine, message: Any, converted: list[Any] | None = None
    ) -> _Group:
        """Submit one request message's items to the engine.

        ``converted`` holds each item's events as :func:`convert_items`
        made them (or its error), when that was done on the thread pool.
        """
        if isinstance(message, RefusedRequest):
            return [(0, message.error(), False)]
        opted = message.acks_in_more
        if len(message.more) >= MAX_ITEMS_PER_MESSAGE:
            error = InvalidArgumentError(
                "more",
                f"holds {len(message.more)} items, over the limit of {MAX_ITEMS_PER_MESSAGE - 1}",
            )
            return [(item.request_id, error, opted) for item in (message, *message.more)]
        group: _Group = []
        for index, item in enumerate((message, *message.more)):
            try:
                if index and item.more:
                    raise InvalidArgumentError("more", "an item in more must not carry more")
                # A bare finish resolves to the turn's event count (its ack
                # reports it, as FinishTurn does); anything else to positions.
                future: Future[list[int]] | Future[int]
                expected = (
                    item.expected_next_position if item.HasField("expected_next_position") else None
                )
                if not item.events and expected is not None:
                    raise InvalidArgumentError(
                        "expected_next_position", "applies to events; this item has none"
                    )
                if item.finish_turn and not item.events:
                    future = engine.finish_turn(item.thread_id, item.turn)
                else:
                    if converted is None:
                        events = new_events(item.events, engine.limits.max_events_per_append)
                    elif isinstance(converted[index], DaemonError):
                        raise converted[index]
                    else:
                        events = converted[index]
                    future = engine.append(
                        item.thread_id, item.turn, events, item.finish_turn, expected
                    )
                group.append((item.request_id, future, opted))
            except DaemonError as error:
                group.append((item.request_id, error, opted))
        return group
