"""``turnstore.v1.EventStoreService``: per-thread, turn-scoped event streams over the engine.

AppendStream is served by :mod:`.append_stream`; the errors, registration and
the engine off the loop are shared with the other services
(:mod:`.servicer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any, Final

import grpc
import structlog

from turnstore.server.api import readcost
from turnstore.server.api.grpc import event_reads, event_rows
from turnstore.server.api.grpc.append_stream import AppendStreams
from turnstore.server.api.grpc.envelopes import new_events
from turnstore.server.api.grpc.ingress import INLINE_DECODE_BYTES
from turnstore.server.api.grpc.servicer import (
    BYTES_PER_MESSAGE,
    EVENTS_PER_MESSAGE,
    ServicerBase,
    abort_with,
    message_budget,
    streaming,
    unary,
)
from turnstore.server.api.readcost import run_heavy
from turnstore.server.replay import replaying
from turnstore.server.replay.acks import AckPump
from turnstore.server.replay.errors import FollowerTooSlowError
from turnstore.server.replay.followers import Followers, Sender
from turnstore.server.replay.replaying import MAX_EVENTS_PER_BATCH, MAX_TURN, ReplayQuery
from turnstore.server.storage import records
from turnstore.server.storage.errors import InvalidArgumentError, TurnTooLargeError
from turnstore.server.storage.interface import StorageEngine
from turnstore.server.storage.values import TurnChunk, TurnCursor
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

log = structlog.get_logger("turnstore.service")

# Room left in a GetTurn response for the framing around the turn's records.
GET_TURN_HEADROOM_BYTES: Final = 1024 * 1024
# GetTurn answers up to this size are small reads, larger ones heavy (readcost).
SMALL_TURN_BYTES: Final = 1024 * 1024


def _spliced(values: list[bytes]) -> bytes:
    # Stored values are StoredEvent entries framed as field 1, the `events`
    # of ReadEventsResponse and of ReplayResponse: sent as they are.
    return b"".join(values)


def _as_rows(encoding: int) -> bool:
    """Whether a read asked for JSON rows; InvalidArgumentError for an unknown encoding."""
    if encoding not in (pb.EVENT_ENCODING_UNSPECIFIED, pb.EVENT_ENCODING_JSON_ROWS):
        raise InvalidArgumentError("encoding", f"unknown encoding {encoding}")
    return encoding == pb.EVENT_ENCODING_JSON_ROWS


def _turn_message(chunk: TurnChunk) -> pb.Turn:
    # Stored values are framed as field 1; Turn.events is field 3.
    turn: pb.Turn = pb.Turn.FromString(b"".join(records.retag(value, 3) for value in chunk.events))
    turn.turn = chunk.turn
    turn.finished = chunk.finished
    return turn


class EventStoreService(ServicerBase, pb_grpc.EventStoreServiceServicer):
    """``turnstore.v1.EventStoreService`` over an :class:`StorageEngine`."""

    def __init__(
        self, engine: StorageEngine, executor: Executor, followers: Followers, acks: AckPump
    ) -> None:
        super().__init__(engine, executor, followers, acks)
        # Tasks sending the status of ended followers (the loop keeps weak references).
        self._endings: set[asyncio.Future[None]] = set()
        self._append_streams = AppendStreams(executor, followers, acks)

    @unary
    async def Append(
        self, request: pb.AppendRequest, context: grpc.aio.ServicerContext
    ) -> pb.AppendResponse:
        limit = self._engine.limits.max_events_per_append
        if request.ByteSize() > INLINE_DECODE_BYTES:  # bodies to check: off the loop
            events = await self._run(new_events, request.events, limit)
        else:
            events = new_events(request.events, limit)
        expected = (
            request.expected_next_position if request.HasField("expected_next_position") else None
        )
        future = self._engine.append(request.thread_id, request.turn, events, False, expected)
        positions = await self._acks.wait(future)
        return pb.AppendResponse(positions=positions)

    @unary
    async def FinishTurn(
        self, request: pb.FinishTurnRequest, context: grpc.aio.ServicerContext
    ) -> pb.FinishTurnResponse:
        count = await self._acks.wait(self._engine.finish_turn(request.thread_id, request.turn))
        return pb.FinishTurnResponse(event_count=count)

    @unary
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

    @streaming
    async def ListTurns(
        self, request: pb.ListTurnsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ListTurnsResponse]:
        view = await self._run(self._engine.view, request.thread_id)
        cursor: TurnCursor | None = TurnCursor()
        while cursor is not None:
            chunks, cursor = await self._run(
                self._engine.read_turn_order, view, cursor, message_budget(), True
            )
            for chunk in chunks:
                yield pb.ListTurnsResponse(turn=_turn_message(chunk))

    @streaming
    async def ReadEvents(
        self, request: pb.ReadEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ReadEventsResponse | bytes]:
        if request.order not in (pb.EVENT_ORDER_UNSPECIFIED, pb.EVENT_ORDER_COMMIT):
            if request.order != pb.EVENT_ORDER_TURN:
                raise InvalidArgumentError("order", f"unknown order {request.order}")
            if request.newest_first:
                raise InvalidArgumentError("newest_first", "reads in commit order only")
        encode = event_rows.read_events_message if _as_rows(request.encoding) else _spliced
        view = await self._run(self._engine.view, request.thread_id)
        left = request.limit or None  # events still to send (None: all)
        if request.order == pb.EVENT_ORDER_TURN:
            cursor = await self._run(self._engine.turn_cursor_at_offset, view, request.offset)
            while cursor is not None and left != 0:
                chunks, cursor = await self._run(
                    self._engine.read_turn_order, view, cursor, message_budget(), False
                )
                values = [value for chunk in chunks for value in chunk.events][:left]
                left = None if left is None else left - len(values)
                if values:
                    yield await self._encode(encode, values)
            return
        pages = event_reads.commit_order_pages(
            self._engine, self._run, view, request.offset, left, request.newest_first
        )
        async for values in pages:
            yield await self._encode(encode, values)

    async def _encode(self, encode: Callable[[list[bytes]], bytes], values: list[bytes]) -> bytes:
        # Splicing is free; JSON rows cost µs an event, off the loop when many.
        if encode is _spliced or len(values) <= event_rows.ENCODE_ON_LOOP_EVENTS:
            return encode(values)
        return await self._run(encode, values)

    @unary
    async def EventCount(
        self, request: pb.EventCountRequest, context: grpc.aio.ServicerContext
    ) -> pb.EventCountResponse:
        count = await self._run(self._engine.event_count, request.thread_id)
        return pb.EventCountResponse(count=count)

    @unary
    async def Clear(
        self, request: pb.ClearRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClearResponse:
        removed = await self._acks.wait(self._engine.clear(request.thread_id))
        return pb.ClearResponse(removed_events=removed)

    @streaming
    async def Replay(
        self, request: pb.ReplayRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ReplayResponse | bytes]:
        as_rows = _as_rows(request.encoding)
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
                if not as_rows:
                    # The stored values are `events` entries: send them as they are.
                    message = b"".join(batch.events) + response.SerializeToString()
                else:
                    if batch.events:
                        response.events_json = await self._encode(
                            event_rows.json_rows, batch.events
                        )
                    message = response.SerializeToString()
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

    @streaming
    async def AppendStream(
        self,
        request_iterator: AsyncIterator[pb.AppendStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.AppendStreamResponse]:
        # The scope is read here, in the call's task (see ServicerBase._engine).
        serving = self._append_streams.serve(self._engine, request_iterator)
        async with contextlib.aclosing(serving) as responses:
            async for response in responses:
                yield response

    def end_append_streams(self) -> None:
        """Stop reading every AppendStream; each ends once its items are acknowledged."""
        self._append_streams.end_all()

    @streaming
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
