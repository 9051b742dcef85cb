"""``GET /v1/threads/{thread_id}/events``: a thread's replay as Server-Sent Events.

The query (``after``, ``epoch``, ``follow``, ``from_turn``, ``to_turn``,
``types``, ``until_turn_finished``; ``Last-Event-ID`` wins over ``after``)
becomes a replay (:mod:`turnstore.server.replay.replaying`), whose batches go
out encoded by :mod:`turnstore.server.api.http.sse`. A stream of a session
ends when the session expires or is revoked; one that falls behind the
followers' budget is cut, and the browser resumes with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any, Final

import structlog
from aiohttp import web

from turnstore.server.api.http import sse
from turnstore.server.api.http.common import flag_param, int_param
from turnstore.server.api.http.credentials import ACCESS, Access, Credentials
from turnstore.server.replay import replaying
from turnstore.server.replay.errors import FollowerTooSlowError
from turnstore.server.replay.followers import Followers, Sender
from turnstore.server.replay.replaying import MAX_TURN, ReplayQuery
from turnstore.server.storage.errors import CursorOutOfRangeError, EngineClosedError
from turnstore.server.storage.interface import StorageEngine

log = structlog.get_logger("turnstore.http")

# Browsers reconnect this soon after a stream drops.
RETRY_MILLISECONDS: Final = 1000
_EVENT_STREAM_HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}


@dataclass(frozen=True)
class _StreamRequest:
    query: ReplayQuery
    cursor: sse.StreamCursor
    resumed: bool


class EventStreams:
    """The event-stream route, over the engine as the request's credential sees it."""

    def __init__(
        self,
        executor: Executor,
        followers: Followers,
        credentials: Credentials,
        engine_for: Callable[[web.Request], StorageEngine],
    ) -> None:
        self._executor = executor
        self._followers = followers
        self._credentials = credentials
        self._engine_for = engine_for

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _replay_query(self, request: web.Request, thread_id: str) -> _StreamRequest:
        """The replay a request asks for; ``Last-Event-ID`` wins over ``after``."""
        query = request.query
        header = request.headers.get("Last-Event-ID", "").strip()
        after = query.get("after", "").strip()
        if header:
            cursor = sse.StreamCursor.parse(header, "Last-Event-ID")
        elif after:
            cursor = sse.StreamCursor.parse(after, "after")
        else:
            cursor = sse.StreamCursor()
        epoch = int_param(query, "epoch", None, 0, MAX_TURN)
        types = frozenset(
            name for value in query.getall("types", []) for name in value.split(",") if name
        )
        replay = ReplayQuery(
            thread_id=thread_id,
            start_position=cursor.after_position + 1,
            epoch=cursor.epoch if cursor.epoch is not None else (epoch or None),
            finish_seq=cursor.finish_seq,
            follow=flag_param(query, "follow", True),
            from_turn=int_param(query, "from_turn", 0, 0, MAX_TURN) or 0,
            to_turn=int_param(query, "to_turn", MAX_TURN, 0, MAX_TURN) or 0,
            event_types=types,
            until_turn_finished=int_param(query, "until_turn_finished", None, 0, MAX_TURN),
        )
        replay.check()
        return _StreamRequest(replay, replace(cursor, epoch=replay.epoch), bool(header))

    async def serve(self, request: web.Request, thread_id: str) -> web.StreamResponse:
        """``GET /v1/threads/{thread_id}/events``: the thread's replay as an event stream."""
        asked = self._replay_query(request, thread_id)
        if asked.cursor.ended:
            return web.Response(status=204)
        query = asked.query
        budget = self._followers.send_budget

        def end_too_slow(sender: Sender) -> None:
            # Aborting drops what the transport still buffers for this
            # stream, so its bytes are gone at once; the browser reconnects
            # with Last-Event-ID as after any dropped connection.
            log.info(
                "follower_too_slow",
                thread_id=thread_id,
                transport="http",
                message_bytes=sender.ending,
                peer=request.remote,
            )
            if request.transport is not None:
                request.transport.abort()
            budget.ended(sender)

        engine = self._engine_for(request)
        access: Access = request[ACCESS]
        session = access.session
        batches = replaying.replay(engine, self._run, self._followers, query, end_too_slow)
        try:
            batch = await anext(batches, None)
        except CursorOutOfRangeError as error:
            await batches.aclose()
            return await self._refused_cursor(request, asked.cursor, error)
        except BaseException:
            await batches.aclose()
            raise
        if asked.resumed and (
            batch is None or (batch.final and not (batch.events or batch.finishes or batch.cleared))
        ):
            # Nothing new and nothing more will come: 204 stops EventSource.
            await batches.aclose()
            return web.Response(status=204)
        response = web.StreamResponse(headers=_EVENT_STREAM_HEADERS)
        reason = (
            "until_turn_finished"
            if query.follow and query.until_turn_finished is not None
            else "caught_up"
        )
        pending: asyncio.Future[replaying.ReplayBatch | None] | None = None
        try:
            await response.prepare(request)
            await response.write(b"retry: %d\n\n" % RETRY_MILLISECONDS)
            cursor = asked.cursor
            while True:
                if batch is None:
                    await response.write(sse.end_event(cursor, reason))
                    break
                data, cursor = await self._run(sse.encode_batch, batch, cursor)
                if batch.final:
                    data += sse.end_event(cursor, "thread_cleared" if batch.cleared else reason)
                # While the transport sends the text, keep no other copy of it.
                batch.events = []
                batch.hold(len(data))
                await response.write(data)
                del data
                if batch.final:
                    break
                pending = asyncio.ensure_future(anext(batches, None))
                while not pending.done() and self._credentials.live(session):
                    waits: tuple[asyncio.Future[Any], ...] = (pending,)
                    if session is not None:
                        waits += (self._credentials.revocation_signal(),)
                    woken, _ = await asyncio.wait(
                        waits,
                        timeout=self._credentials.wait_seconds(session),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if not woken and self._credentials.live(session):
                        await response.write(sse.HEARTBEAT)
                if not self._credentials.live(session):
                    # Checked when a session is revoked here (or found revoked
                    # by a fleet's refresh), at its expiry, and at least once a
                    # heartbeat: the stream ends within one of either.
                    await response.write(sse.SESSION_ENDED)
                    break
                batch, pending = pending.result(), None
        except (EngineClosedError, FollowerTooSlowError):
            pass  # shutdown or too slow: close without an end event, so the browser comes back
        except ConnectionError:
            pass  # the reader went away
        except Exception as error:
            # The status line is long gone: log, and end without an end event.
            log.exception("event_stream_failed", thread_id=query.thread_id, error=repr(error))
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            await batches.aclose()
        return response

    async def _refused_cursor(
        self, request: web.Request, cursor: sse.StreamCursor, error: CursorOutOfRangeError
    ) -> web.StreamResponse:
        """A stream that says why its cursor is refused, then ends.

        A 200 stream rather than an error status, so that ``EventSource``
        delivers the ``error`` event's data; its ``end`` event's id makes the
        browser's reconnect a 204, which stops it instead of waiting forever.
        """
        response = web.StreamResponse(headers=_EVENT_STREAM_HEADERS)
        await response.prepare(request)
        await response.write(
            b"retry: %d\n\n" % RETRY_MILLISECONDS
            + sse.cursor_error_event(error, cursor.epoch)
            + sse.end_event(cursor, error.reason)
        )
        return response
