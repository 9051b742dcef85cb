"""The gRPC servicers of ``turnstore.v1`` over the storage engine.

Blocking engine reads run on a thread pool, never on the event loop; writes
are queued to the engine's writer thread and awaited through their futures.
:data:`STATUS_BY_ERROR` is the one table from engine exceptions to status
codes.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor, Future
from typing import Any, Final, ParamSpec, TypeVar

import grpc
import structlog

from turnstore.server.access.scoped_engine import scoped
from turnstore.server.access.scopes import CALL_SCOPE
from turnstore.server.api import readcost
from turnstore.server.api.bodies import (
    check_json_body,
    check_json_snapshot,
    event_content_type,
    is_json_type,
)
from turnstore.server.api.grpc.ingress import (
    INLINE_DECODE_BYTES,
    Ingress,
    RawRequest,
    RefusedRequest,
)
from turnstore.server.api.readcost import run_heavy
from turnstore.server.replay import replaying
from turnstore.server.replay.acks import AckPump
from turnstore.server.replay.followers import Followers, Sender
from turnstore.server.replay.replaying import MAX_EVENTS_PER_BATCH, MAX_TURN, ReplayQuery
from turnstore.server.storage import records
from turnstore.server.storage.errors import (
    BackupFailedError,
    CursorOutOfRangeError,
    DatabaseUnavailableError,
    DataDirLockedError,
    DiskIOError,
    EngineClosedError,
    EngineError,
    EventIdConflictError,
    FollowerTooSlowError,
    InvalidArgumentError,
    PermissionDeniedError,
    StorageFullError,
    ThreadClearedError,
    TurnAlreadyFinishedError,
    TurnFinishedError,
    TurnTooLargeError,
    UnauthenticatedError,
    VersionConflictError,
)
from turnstore.server.storage.interface import StorageEngine
from turnstore.server.storage.values import NewEvent, ReadBudget, TurnChunk, TurnCursor
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

P = ParamSpec("P")
T = TypeVar("T")

log = structlog.get_logger("turnstore.service")

ERROR_METADATA_KEY: Final = "turnstore-error"
CURRENT_VERSION_METADATA_KEY: Final = "turnstore-current-version"
JSON: Final = "application/json"

# Engine exception -> status code. Looked up along the exception's MRO.
STATUS_BY_ERROR: Final[dict[type[EngineError], grpc.StatusCode]] = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    TurnFinishedError: grpc.StatusCode.FAILED_PRECONDITION,
    TurnAlreadyFinishedError: grpc.StatusCode.FAILED_PRECONDITION,
    EventIdConflictError: grpc.StatusCode.FAILED_PRECONDITION,
    VersionConflictError: grpc.StatusCode.FAILED_PRECONDITION,
    BackupFailedError: grpc.StatusCode.FAILED_PRECONDITION,
    ThreadClearedError: grpc.StatusCode.ABORTED,
    StorageFullError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    FollowerTooSlowError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    EngineClosedError: grpc.StatusCode.UNAVAILABLE,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    DataDirLockedError: grpc.StatusCode.UNAVAILABLE,
    DiskIOError: grpc.StatusCode.UNAVAILABLE,
    DatabaseUnavailableError: grpc.StatusCode.UNAVAILABLE,
    CursorOutOfRangeError: grpc.StatusCode.OUT_OF_RANGE,
    EngineError: grpc.StatusCode.INTERNAL,
}

# Header field limits checked here because the engine sees envelopes encoded.
MAX_TYPE_BYTES: Final = 128
MAX_TIMESTAMP_BYTES: Final = 64
MAX_CONTENT_TYPE_BYTES: Final = 128
# Events or turn pieces per streamed message.
EVENTS_PER_MESSAGE: Final = replaying.EVENTS_PER_BATCH
# Event bytes per streamed message: a message stops growing past this, so even
# a thread of maximal events streams within the gRPC message limit.
BYTES_PER_MESSAGE: Final = replaying.BYTES_PER_BATCH
# AppendStream messages accepted but not yet acknowledged, per stream.
APPEND_STREAM_WINDOW: Final = 1024
# Items in one AppendStream message (the first and those in `more`).
MAX_ITEMS_PER_MESSAGE: Final = 4096
# Threads or conversation keys per ListThreads / ListKeys message (ids are at
# most 511 bytes, so a message stays well under 1 MiB).
LISTED_PER_MESSAGE: Final = 1000
# Room left in a GetTurn response for the framing around the turn's records.
GET_TURN_HEADROOM_BYTES: Final = 1024 * 1024
# GetTurn answers up to this size are small reads, larger ones heavy (readcost).
SMALL_TURN_BYTES: Final = 1024 * 1024


def status_for(error: EngineError) -> grpc.StatusCode:
    """The status code for an engine error (INTERNAL for an unlisted class)."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return grpc.StatusCode.INTERNAL


async def abort_with(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    """End the call with the status, reason and message of ``error`` (INTERNAL if not ours)."""
    if isinstance(error, EngineError):
        code, reason, message = status_for(error), error.reason, str(error)
    else:
        log.exception("internal_error", error=repr(error))
        code, reason = grpc.StatusCode.INTERNAL, "internal"
        message = "internal error; the daemon log has the details"
    metadata: tuple[tuple[str, str], ...] = ((ERROR_METADATA_KEY, reason),)
    if isinstance(error, VersionConflictError):
        metadata += ((CURRENT_VERSION_METADATA_KEY, str(error.current_version)),)
    await context.abort(code, message, trailing_metadata=metadata)


def _unary(
    method: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T]]:
    """Turn exceptions of a unary handler into status codes."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            if isinstance(request, RawRequest):
                request = await request.decode()
            if isinstance(request, RefusedRequest):
                raise request.error()
            return await method(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as error:
            await abort_with(context, error)
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
            if isinstance(request, RefusedRequest):
                raise request.error()
            async for item in method(self, request, context):
                yield item
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as error:
            await abort_with(context, error)

    return wrapper


def _check_header(index: int, envelope: pb.EventEnvelope) -> None:
    """Raise InvalidArgumentError for a missing type or an oversized header field."""
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


def _turn_message(chunk: TurnChunk) -> pb.Turn:
    # Stored values are framed as field 1; Turn.events is field 3.
    turn: pb.Turn = pb.Turn.FromString(b"".join(records.retag(value, 3) for value in chunk.events))
    turn.turn = chunk.turn
    turn.finished = chunk.finished
    return turn


def _serialize(message: Any) -> bytes:
    """Serialize a response, passing pre-encoded bytes through unchanged."""
    if isinstance(message, bytes):
        return message
    data: bytes = message.SerializeToString()
    return data


def add_service(
    server: grpc.aio.Server, service_name: str, servicer: object, ingress: Ingress
) -> None:
    """Register every method of ``turnstore.v1.<service_name>`` on ``servicer``.

    Unlike the generated ``add_*Servicer_to_server``, handlers may yield or
    return response bytes already in wire form (the stored event records),
    and requests are checked against ``ingress``'s limits before decoding.
    """
    service = pb.DESCRIPTOR.services_by_name[service_name]
    handlers = {}
    for method in service.methods:
        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        request_class = getattr(pb, method.input_type.name)
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=ingress.deserializer(method.name, request_class),
            response_serializer=_serialize,
        )
    generic = grpc.method_handlers_generic_handler(service.full_name, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(service.full_name, handlers)


def _budget() -> ReadBudget:
    return ReadBudget(EVENTS_PER_MESSAGE, BYTES_PER_MESSAGE)


def _new_events(envelopes: Any, max_events: int) -> list[NewEvent]:
    """Check and encode request envelopes for the engine.

    Their count is checked first, so an over-long batch costs no per-event work.
    """
    if len(envelopes) > max_events:
        raise InvalidArgumentError(
            "events",
            f"holds {len(envelopes)} events, over the limit of {max_events} per append",
        )
    events = []
    for index, envelope in enumerate(envelopes):
        content_type = envelope.content_type
        # Fast path: a UTF-8 character is at most 4 bytes, so short fields fit.
        event_type = envelope.type
        if not (
            event_type
            and len(event_type) <= MAX_TYPE_BYTES // 4
            and len(envelope.timestamp) <= MAX_TIMESTAMP_BYTES // 4
            and len(content_type) <= MAX_CONTENT_TYPE_BYTES // 4
        ):
            _check_header(index, envelope)
        if content_type != JSON:
            envelope.content_type = event_content_type(index, content_type)
        check_json_body(index, envelope.event_id, envelope.body)
        events.append(NewEvent(envelope.event_id, envelope.SerializeToString()))
    return events


def _convert_items(message: Any, max_events: int) -> list[list[NewEvent] | EngineError] | None:
    """:func:`_new_events` of every item of a stream message, each error kept for its item.

    For the thread pool: checking and encoding the events of a large message
    (their JSON bodies above all) would block the event loop for seconds.
    None for a refused message.
    """
    if isinstance(message, RefusedRequest):
        return None
    converted: list[list[NewEvent] | EngineError] = []
    for item in (message, *message.more):
        try:
            converted.append(_new_events(item.events, max_events))
        except EngineError as error:
            converted.append(error)
    return converted


def _item_error(error: EngineError) -> pb.ItemError:
    code = status_for(error)
    return pb.ItemError(code=code.value[0], reason=error.reason, message=str(error))


# One AppendStream message's items: (request id, waiter or error, acks_in_more).
_Group = list[tuple[int, Any, bool]]


def _ready(group: _Group) -> bool:
    """Whether every item of a queued message has its outcome."""
    return all(not isinstance(o, asyncio.Future) or o.done() for _, o, _ in group)


async def _acknowledge(group: _Group) -> list[pb.AppendStreamResponse]:
    """Wait for a message's items to commit; their acknowledgements, in order."""
    acks = []
    for request_id, outcome, _ in group:
        if isinstance(outcome, asyncio.Future):
            try:
                result = await outcome
            except EngineError as error:
                outcome = error
            else:
                if isinstance(result, int):  # a bare finish: the turn's event count
                    acks.append(pb.AppendStreamResponse(request_id=request_id, event_count=result))
                else:
                    acks.append(pb.AppendStreamResponse(request_id=request_id, positions=result))
                continue
        acks.append(pb.AppendStreamResponse(request_id=request_id, error=_item_error(outcome)))
    return acks


class _Base:
    def __init__(
        self, engine: StorageEngine, executor: Executor, followers: Followers, acks: AckPump
    ) -> None:
        self._whole_engine = engine
        self._executor = executor
        self._followers = followers
        self._acks = acks
        # Tasks sending the status of ended followers (the loop keeps weak references).
        self._endings: set[asyncio.Future[None]] = set()
        # The request readers of the open AppendStreams (ended at shutdown).
        self._append_streams: set[asyncio.Task[None]] = set()

    @property
    def _engine(self) -> StorageEngine:
        """The engine as the current call's scope sees it (the whole engine for the full scope).

        Read on the event loop, in the call's task: the scope is a context
        variable that executor threads do not inherit.
        """
        return scoped(self._whole_engine, CALL_SCOPE.get())

    async def _pages(
        self,
        fetch: Callable[[str, int], list[T]],
        start_after: str,
        key_of: Callable[[T], str],
    ) -> AsyncIterator[list[T]]:
        """Pages of a keyed listing, fetched off the loop, until one comes back short."""
        after = start_after
        while True:
            page = await self._run(fetch, after, LISTED_PER_MESSAGE)
            if page:
                yield page
            if len(page) < LISTED_PER_MESSAGE:
                return
            after = key_of(page[-1])

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking engine read on the thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))


class EventStoreService(_Base, pb_grpc.EventStoreServiceServicer):
    """``turnstore.v1.EventStoreService`` over an :class:`StorageEngine`."""

    @_unary
    async def Append(
        self, request: pb.AppendRequest, context: grpc.aio.ServicerContext
    ) -> pb.AppendResponse:
        limit = self._engine.limits.max_events_per_append
        if request.ByteSize() > INLINE_DECODE_BYTES:  # bodies to check: off the loop
            events = await self._run(_new_events, request.events, limit)
        else:
            events = _new_events(request.events, limit)
        future = self._engine.append(request.thread_id, request.turn, events)
        positions = await self._acks.wait(future)
        return pb.AppendResponse(positions=positions)

    @_unary
    async def FinishTurn(
        self, request: pb.FinishTurnRequest, context: grpc.aio.ServicerContext
    ) -> pb.FinishTurnResponse:
        count = await self._acks.wait(self._engine.finish_turn(request.thread_id, request.turn))
        return pb.FinishTurnResponse(event_count=count)

    @_unary
    async def GetTurn(
        self, request: pb.GetTurnRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTurnResponse | bytes:
        # A small turn is read at once; a large one waits for a heavy-read
        # slot, so that big turns never hold up small ones; a turn that
        # cannot fit one response is refused before it is read.
        max_bytes = self._engine.limits.max_message_bytes - GET_TURN_HEADROOM_BYTES
        try:
            chunk = await self._run(
                self._engine.get_turn, request.thread_id, request.turn, SMALL_TURN_BYTES
            )
        except TurnTooLargeError:
            try:
                chunk = await run_heavy(
                    self._executor,
                    self._engine.get_turn,
                    request.thread_id,
                    request.turn,
                    max_bytes,
                )
            except TurnTooLargeError as error:
                # RESOURCE_EXHAUSTED as gRPC itself answered a message over the
                # limit (no reason trailer, so every client maps it as before),
                # but before the turn is read, naming the size and the paged reads.
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
                raise AssertionError("unreachable: abort raises") from error
        return readcost.get_turn_response(chunk)

    @_streaming
    async def ListTurns(
        self, request: pb.ListTurnsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ListTurnsResponse]:
        view = await self._run(self._engine.view, request.thread_id)
        cursor: TurnCursor | None = TurnCursor()
        while cursor is not None:
            chunks, cursor = await self._run(
                self._engine.read_turn_order, view, cursor, _budget(), True
            )
            for chunk in chunks:
                yield pb.ListTurnsResponse(turn=_turn_message(chunk))

    @_streaming
    async def ReadEvents(
        self, request: pb.ReadEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ReadEventsResponse | bytes]:
        view = await self._run(self._engine.view, request.thread_id)
        if request.order == pb.EVENT_ORDER_TURN:
            cursor = await self._run(self._engine.turn_cursor_at_offset, view, request.offset)
            while cursor is not None:
                chunks, cursor = await self._run(
                    self._engine.read_turn_order, view, cursor, _budget(), False
                )
                values = [value for chunk in chunks for value in chunk.events]
                if values:
                    yield b"".join(values)
            return
        if request.order not in (pb.EVENT_ORDER_UNSPECIFIED, pb.EVENT_ORDER_COMMIT):
            raise InvalidArgumentError("order", f"unknown order {request.order}")
        position = request.offset
        while True:
            values = await self._run(self._engine.read_commit_order, view, position, _budget())
            if not values:
                return
            position += len(values)
            yield b"".join(values)

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
        removed = await self._acks.wait(self._engine.clear(request.thread_id))
        return pb.ClearResponse(removed_events=removed)

    @_streaming
    async def Replay(
        self, request: pb.ReplayRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ReplayResponse | bytes]:
        query = ReplayQuery(
            thread_id=request.thread_id,
            start_position=request.after_position + 1 if request.HasField("after_position") else 0,
            epoch=request.thread_epoch or None,
            follow=request.follow,
            from_turn=request.from_turn if request.HasField("from_turn") else 0,
            to_turn=request.to_turn if request.HasField("to_turn") else MAX_TURN,
            event_types=frozenset(request.event_types),
            until_turn_finished=(
                request.until_turn_finished if request.HasField("until_turn_finished") else None
            ),
            max_events=min(
                request.max_events_per_message or EVENTS_PER_MESSAGE, MAX_EVENTS_PER_BATCH
            ),
            max_bytes=BYTES_PER_MESSAGE,
        )
        end = functools.partial(
            self._end_too_slow, request.thread_id, context, asyncio.current_task()
        )
        batches = replaying.replay(self._engine, self._run, self._followers, query, end)
        try:
            async for batch in batches:
                if batch.cleared:
                    yield pb.ReplayResponse(
                        thread_cleared=True,
                        next_position=batch.next_position,
                        thread_epoch=batch.epoch or 0,
                    )
                    return
                response = pb.ReplayResponse(
                    next_position=batch.next_position,
                    thread_epoch=batch.epoch or 0,
                    caught_up=batch.caught_up,
                    finished_turns=[
                        pb.TurnFinished(
                            turn=finish.turn,
                            event_count=finish.event_count,
                            last_position=finish.last_position,
                        )
                        for finish in batch.finishes
                    ],
                )
                # The stored values are `events` entries: send them as they are.
                message = b"".join(batch.events) + response.SerializeToString()
                # While gRPC writes the message, keep no other copy of its events.
                batch.events = []
                batch.hold(len(message))
                del batch
                yield message
                del message
        except FollowerTooSlowError:
            # gRPC took the message after the budget ended this follower: its
            # status is on the way and its task about to be cancelled; end
            # without a status of ours.
            raise asyncio.CancelledError from None
        finally:
            # Now, not when the generator is collected: it holds the
            # follower's registration and its share of the budget.
            await batches.aclose()

    def _end_too_slow(
        self,
        thread_id: str,
        context: grpc.aio.ServicerContext,
        task: asyncio.Task[Any] | None,
        sender: Sender,
    ) -> None:
        """End a follower whose message gRPC cannot send: the budget needs its bytes.

        Its status goes out after that message, once the peer reads; its
        task is cancelled at once so that the stream drops its own copy.
        """
        log.info(
            "follower_too_slow",
            thread_id=thread_id,
            message_bytes=sender.ending,
            peer=context.peer(),
        )

        async def send_status() -> None:
            try:
                await abort_with(
                    context,
                    FollowerTooSlowError(
                        "the follower did not read its messages fast enough for the daemon's "
                        "follower budget; resume after the last position received"
                    ),
                )
            except grpc.aio.AbortError:
                pass
            except Exception as error:  # the peer went away meanwhile
                log.debug("follower_status_not_sent", error=repr(error))
            finally:
                self._followers.send_budget.ended(sender)

        ending = asyncio.ensure_future(send_status())
        self._endings.add(ending)
        ending.add_done_callback(self._endings.discard)
        if task is not None:
            # After the status batch has started (tasks run in the order scheduled).
            asyncio.get_running_loop().call_soon(task.cancel)

    @_streaming
    async def AppendStream(
        self,
        request_iterator: AsyncIterator[pb.AppendStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.AppendStreamResponse]:
        # Items are submitted as they arrive (so they share commits) and
        # acknowledged in order, the acknowledgements that are ready together
        # in one message. The window stops reading requests when too many
        # messages await their commit. At shutdown the stream ends once what
        # it submitted is acknowledged, so the daemon need not wait out its
        # grace period for a writer that keeps its stream open.
        pending: collections.deque[_Group | BaseException | None] = collections.deque()
        arrived = asyncio.Event()
        window = asyncio.Semaphore(APPEND_STREAM_WINDOW)

        def put(entry: _Group | BaseException | None) -> None:
            pending.append(entry)
            arrived.set()

        max_events = self._engine.limits.max_events_per_append

        async def submit_all() -> None:
            try:
                async for message in request_iterator:
                    converted = None
                    if isinstance(message, RawRequest):  # large: decoded and converted off the loop
                        message = await message.decode()  # raises for a message over the limits
                        converted = await self._run(_convert_items, message, max_events)
                    await window.acquire()
                    put(self._submit_items(message, converted))
            except asyncio.CancelledError:  # shutdown (or the call ended)
                put(EngineClosedError("the daemon is shutting down"))
                raise
            except Exception as error:  # the request stream broke
                put(error)
            put(None)

        submitter = asyncio.create_task(submit_all())
        self._append_streams.add(submitter)
        acks_in_more = False
        try:
            while True:
                while not pending:
                    if self._followers.closing:
                        raise EngineClosedError("the daemon is shutting down")
                    arrived.clear()
                    await arrived.wait()
                entry = pending.popleft()
                if not isinstance(entry, list):
                    if entry is not None:
                        raise entry
                    return
                acks = await _acknowledge(entry)
                window.release()
                acks_in_more = acks_in_more or entry[0][2]
                if not acks_in_more:
                    for ack in acks:
                        yield ack
                    continue
                # Messages whose items are all committed go in the same reply.
                while pending and isinstance(pending[0], list) and _ready(pending[0]):
                    acks += await _acknowledge(pending.popleft())  # type: ignore[arg-type]
                    window.release()
                response = acks[0]
                response.more.extend(acks[1:])
                yield response
        finally:
            self._append_streams.discard(submitter)
            submitter.cancel()

    def end_append_streams(self) -> None:
        """Stop reading every AppendStream; each ends once its items are acknowledged."""
        for submitter in list(self._append_streams):
            submitter.cancel()

    def _submit_items(self, message: Any, converted: list[Any] | None = None) -> _Group:
        """Submit one request message's items to the engine.

        ``converted`` holds each item's events as :func:`_convert_items`
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
                if item.finish_turn and not item.events:
                    future = self._engine.finish_turn(item.thread_id, item.turn)
                else:
                    if converted is None:
                        events = _new_events(item.events, self._engine.limits.max_events_per_append)
                    elif isinstance(converted[index], EngineError):
                        raise converted[index]
                    else:
                        events = converted[index]
                    future = self._engine.append(
                        item.thread_id, item.turn, events, finish=item.finish_turn
                    )
                group.append((item.request_id, self._acks.wait(future), opted))
            except EngineError as error:
                group.append((item.request_id, error, opted))
        return group

    @_streaming
    async def ListThreads(
        self, request: pb.ListThreadsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ListThreadsResponse]:
        async for page in self._pages(
            self._engine.list_threads, request.start_after, lambda thread: thread.thread_id
        ):
            yield pb.ListThreadsResponse(
                threads=[
                    pb.ThreadSummary(
                        thread_id=thread.thread_id,
                        event_count=thread.event_count,
                        finished_turns=thread.finished_turns,
                        last_write_unix_nanos=thread.last_write_ns,
                    )
                    for thread in page
                ]
            )


class AdminService(_Base, pb_grpc.AdminServiceServicer):
    """``turnstore.v1.AdminService``: counters of the daemon."""

    @_unary
    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
        stored = await self._run(self._engine.storage_stats)
        retention = self._engine.retention_stats()
        return pb.GetStatsResponse(
            live_followers=self._followers.waiting,
            open_replays=self._followers.open_replays,
            map_size_bytes=stored.space.reserved_bytes,
            threads=stored.threads,
            events=stored.events,
            turns=stored.turns,
            finished_turns=stored.finished_turns,
            conversations=stored.conversations,
            snapshot_versions=stored.snapshot_versions,
            data_file_bytes=stored.data_file_bytes,
            retention_enabled=retention.enabled,
            retention_sweeps=retention.sweeps,
            retention_removed_threads=retention.removed_threads,
            retention_removed_events=retention.removed_events,
            retention_removed_conversations=retention.removed_conversations,
            retention_last_error=retention.last_error or "",
            follower_held_bytes=self._followers.send_budget.held_bytes,
            follower_ending_bytes=self._followers.send_budget.ending_bytes,
            followers_ended_too_slow=self._followers.send_budget.ended_too_slow,
            used_bytes=stored.space.used_bytes,
            max_db_bytes=stored.space.max_bytes,
            write_limit_bytes=stored.space.write_limit_bytes,
        )

    @_unary
    async def Backup(
        self, request: pb.BackupRequest, context: grpc.aio.ServicerContext
    ) -> pb.BackupResponse:
        result = await self._run(self._engine.backup, request.dest_dir)
        log.info("backup_written", dest_dir=str(result.dest_dir), bytes=result.bytes_written)
        return pb.BackupResponse(dest_dir=str(result.dest_dir), bytes_written=result.bytes_written)


class HistoryStoreService(_Base, pb_grpc.HistoryStoreServiceServicer):
    """``turnstore.v1.HistoryStoreService`` over an :class:`StorageEngine`."""

    # Large snapshots labelled JSON are parsed to be checked one at a time
    # (made on first use, on the service's event loop).
    _large_json_checks: asyncio.Semaphore | None = None

    @_unary
    async def Save(
        self, request: pb.SaveRequest, context: grpc.aio.ServicerContext
    ) -> pb.SaveResponse:
        content_type = request.content_type or JSON
        if len(content_type.encode("utf-8")) > MAX_CONTENT_TYPE_BYTES:
            raise InvalidArgumentError(
                "content_type", f"is over the limit of {MAX_CONTENT_TYPE_BYTES} bytes"
            )
        if is_json_type(content_type):
            # Checked as strictly as event bodies; a large one off the event
            # loop, one at a time: parsing materialises the value (32 MiB of
            # `[{},{},...]` takes about 1 GB for a moment).
            if len(request.data) <= INLINE_DECODE_BYTES:
                check_json_snapshot(request.data)
            else:
                if self._large_json_checks is None:
                    self._large_json_checks = asyncio.Semaphore(1)
                async with self._large_json_checks:
                    await self._run(check_json_snapshot, request.data)
        expected = request.expected_version if request.HasField("expected_version") else None
        future = self._engine.save_snapshot(request.key, request.data, content_type, expected)
        version = await self._acks.wait(future)
        return pb.SaveResponse(version=version)

    @_unary
    async def Load(
        self, request: pb.LoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadResponse | bytes:
        version = request.version if request.HasField("version") else None
        stored = await run_heavy(self._executor, self._engine.load_snapshot, request.key, version)
        return readcost.load_response(stored)

    @_unary
    async def ListVersions(
        self, request: pb.ListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListVersionsResponse:
        kept = await self._run(self._engine.list_snapshot_versions, request.key)
        return pb.ListVersionsResponse(
            versions=[
                pb.SnapshotVersion(
                    version=stored.version,
                    saved_at_unix_nanos=stored.saved_at_ns,
                    size_bytes=stored.size_bytes,
                    content_type=stored.content_type,
                )
                for stored in kept
            ]
        )

    @_unary
    async def Delete(
        self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteResponse:
        removed = await self._acks.wait(self._engine.delete_snapshots(request.key))
        return pb.DeleteResponse(removed_versions=removed)

    @_streaming
    async def ListKeys(
        self, request: pb.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ListKeysResponse]:
        async for page in self._pages(self._engine.list_keys, request.start_after, lambda k: k.key):
            yield pb.ListKeysResponse(
                keys=[
                    pb.KeySummary(
                        key=key.key,
                        version=key.current_version,
                        last_write_unix_nanos=key.last_write_ns,
                    )
                    for key in page
                ]
            )
