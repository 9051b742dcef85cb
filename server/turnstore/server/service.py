"""The gRPC servicers of ``turnstore.v1`` over the storage engine.

Blocking engine reads run on a thread pool, never on the event loop; writes
are queued to the engine's writer thread and awaited through their futures.
:data:`STATUS_BY_ERROR` is the one table from engine exceptions to status
codes.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, Final, ParamSpec, TypeVar

import grpc
import structlog

from turnstore.server.engine import Engine, NewEvent, TurnChunk, TurnCursor
from turnstore.server.errors import (
    DataDirLockedError,
    EngineClosedError,
    EngineError,
    InvalidArgumentError,
    StorageFullError,
    ThreadClearedError,
    TurnAlreadyFinishedError,
    TurnFinishedError,
)
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

P = ParamSpec("P")
T = TypeVar("T")

log = structlog.get_logger("turnstore.service")

ERROR_METADATA_KEY: Final = "turnstore-error"
JSON: Final = "application/json"

# Engine exception -> status code. Looked up along the exception's MRO.
STATUS_BY_ERROR: Final[dict[type[EngineError], grpc.StatusCode]] = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    TurnFinishedError: grpc.StatusCode.FAILED_PRECONDITION,
    TurnAlreadyFinishedError: grpc.StatusCode.FAILED_PRECONDITION,
    ThreadClearedError: grpc.StatusCode.ABORTED,
    StorageFullError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    EngineClosedError: grpc.StatusCode.UNAVAILABLE,
    DataDirLockedError: grpc.StatusCode.UNAVAILABLE,
    EngineError: grpc.StatusCode.INTERNAL,
}

# Header field limits checked here because the engine sees envelopes encoded.
MAX_TYPE_BYTES: Final = 128
MAX_TIMESTAMP_BYTES: Final = 64
MAX_CONTENT_TYPE_BYTES: Final = 128
# Events or turn pieces per streamed message.
EVENTS_PER_MESSAGE: Final = 512


def status_for(error: EngineError) -> grpc.StatusCode:
    """The status code for an engine error (INTERNAL for an unlisted class)."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return grpc.StatusCode.INTERNAL


async def _abort(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    if isinstance(error, EngineError):
        code, reason, message = status_for(error), error.reason, str(error)
    else:
        log.exception("internal_error", error=repr(error))
        code, reason = grpc.StatusCode.INTERNAL, "internal"
        message = "internal error; the daemon log has the details"
    await context.abort(code, message, trailing_metadata=((ERROR_METADATA_KEY, reason),))


def _unary(
    method: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T]]:
    """Turn exceptions of a unary handler into status codes."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as error:
            await _abort(context, error)
            raise AssertionError("unreachable: abort raises") from error

    return wrapper


def _streaming(
    method: Callable[..., AsyncIterator[T]],
) -> Callable[..., AsyncIterator[T]]:
    """Turn exceptions of a server-streaming handler into status codes."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[T]:
        try:
            async for item in method(self, request, context):
                yield item
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as error:
            await _abort(context, error)

    return wrapper


def _check_header(index: int, envelope: pb.EventEnvelope) -> None:
    for name, value, limit, required in (
        ("type", envelope.type, MAX_TYPE_BYTES, True),
        ("timestamp", envelope.timestamp, MAX_TIMESTAMP_BYTES, False),
        ("content_type", envelope.content_type, MAX_CONTENT_TYPE_BYTES, False),
    ):
        if required and not value:
            raise InvalidArgumentError(f"events[{index}].{name}", "must not be empty")
        size = len(value.encode("utf-8"))
        if size > limit:
            raise InvalidArgumentError(
                f"events[{index}].{name}", f"is {size} bytes, over the limit of {limit}"
            )


def _stored_events(records: list[bytes]) -> list[pb.StoredEvent]:
    return [pb.StoredEvent.FromString(record) for record in records]


def _turn_message(chunk: TurnChunk) -> pb.Turn:
    return pb.Turn(turn=chunk.turn, finished=chunk.finished, events=_stored_events(chunk.events))


class _Base:
    def __init__(self, engine: Engine, executor: Executor) -> None:
        self._engine = engine
        self._executor = executor

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking engine read on the thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))


class EventStoreService(_Base, pb_grpc.EventStoreServicer):
    """``turnstore.v1.EventStore`` over an :class:`Engine`."""

    @_unary
    async def Append(
        self, request: pb.AppendRequest, context: grpc.aio.ServicerContext
    ) -> pb.AppendResponse:
        events = []
        for index, envelope in enumerate(request.events):
            _check_header(index, envelope)
            if not envelope.content_type:
                envelope.content_type = JSON
            events.append(NewEvent(envelope.event_id, envelope.SerializeToString()))
        future = self._engine.append(request.thread_id, request.turn, events)
        positions = await asyncio.wrap_future(future)
        return pb.AppendResponse(positions=positions)

    @_unary
    async def FinishTurn(
        self, request: pb.FinishTurnRequest, context: grpc.aio.ServicerContext
    ) -> pb.FinishTurnResponse:
        count = await asyncio.wrap_future(self._engine.finish_turn(request.thread_id, request.turn))
        return pb.FinishTurnResponse(event_count=count)

    @_unary
    async def GetTurn(
        self, request: pb.GetTurnRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTurnResponse:
        chunk = await self._run(self._engine.get_turn, request.thread_id, request.turn)
        if chunk is None:
            return pb.GetTurnResponse(found=False)
        return pb.GetTurnResponse(found=True, turn=_turn_message(chunk))

    @_streaming
    async def ListTurns(
        self, request: pb.ListTurnsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ListTurnsResponse]:
        view = await self._run(self._engine.view, request.thread_id)
        cursor: TurnCursor | None = TurnCursor()
        while cursor is not None:
            chunks, cursor = await self._run(
                self._engine.read_turn_order, view, cursor, EVENTS_PER_MESSAGE, True
            )
            for chunk in chunks:
                yield pb.ListTurnsResponse(turn=_turn_message(chunk))

    @_streaming
    async def ReadEvents(
        self, request: pb.ReadEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ReadEventsResponse]:
        view = await self._run(self._engine.view, request.thread_id)
        if request.order == pb.EVENT_ORDER_TURN:
            cursor = await self._run(self._engine.turn_cursor_at_offset, view, request.offset)
            while cursor is not None:
                chunks, cursor = await self._run(
                    self._engine.read_turn_order, view, cursor, EVENTS_PER_MESSAGE, False
                )
                records = [record for chunk in chunks for record in chunk.events]
                if records:
                    yield pb.ReadEventsResponse(events=_stored_events(records))
            return
        if request.order not in (pb.EVENT_ORDER_UNSPECIFIED, pb.EVENT_ORDER_COMMIT):
            raise InvalidArgumentError("order", f"unknown order {request.order}")
        position = request.offset
        while True:
            records = await self._run(
                self._engine.read_commit_order, view, position, EVENTS_PER_MESSAGE
            )
            if not records:
                return
            position += len(records)
            yield pb.ReadEventsResponse(events=_stored_events(records))

    @_unary
    async def EventCount(
        self, request: pb.EventCountRequest, context: grpc.aio.ServicerContext
    ) -> pb.EventCountResponse:
        count = await self._run(self._engine.event_count, request.thread_id)
        return pb.EventCountResponse(count=count)

    @_unary
    async def Clear(
        self, request: pb.ClearRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClearResponse:
        removed = await asyncio.wrap_future(self._engine.clear(request.thread_id))
        return pb.ClearResponse(removed_events=removed)


class HistoryStoreService(_Base, pb_grpc.HistoryStoreServicer):
    """``turnstore.v1.HistoryStore`` over an :class:`Engine`."""

    @_unary
    async def Save(
        self, request: pb.SaveRequest, context: grpc.aio.ServicerContext
    ) -> pb.SaveResponse:
        content_type = request.content_type or JSON
        if len(content_type.encode("utf-8")) > MAX_CONTENT_TYPE_BYTES:
            raise InvalidArgumentError(
                "content_type", f"is over the limit of {MAX_CONTENT_TYPE_BYTES} bytes"
            )
        future = self._engine.save_snapshot(request.key, request.data, content_type)
        version = await asyncio.wrap_future(future)
        return pb.SaveResponse(version=version)

    @_unary
    async def Load(
        self, request: pb.LoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadResponse:
        stored = await self._run(self._engine.load_snapshot, request.key)
        if stored is None:
            return pb.LoadResponse(found=False)
        snapshot = pb.Snapshot(
            version=stored.version,
            content_type=stored.content_type,
            data=stored.data,
            saved_at_unix_nanos=stored.saved_at_ns,
        )
        return pb.LoadResponse(found=True, snapshot=snapshot)
