"""The HTTP listener's JSON reads: threads, a thread's turns, conversation snapshots.

- ``GET /v1/threads``: threads by id (``after``, ``limit``) or most recent
  first (``order=recent``).
- ``GET /v1/threads/{thread_id}/turns``: turns with their events, paged by
  count and by bytes.
- ``GET /v1/conversations/{key}``: a snapshot (``version``, else the current).

Reads and JSON encoding run on the read pool, large ones as heavy reads
(:mod:`turnstore.server.api.readcost`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Final

import orjson
from aiohttp import web

from turnstore.server.api import readcost
from turnstore.server.api.http import sse
from turnstore.server.api.http.common import http_error, int_param, json_response, unquote_path
from turnstore.server.api.readcost import run_heavy
from turnstore.server.replay.replaying import MAX_TURN
from turnstore.server.storage.errors import InvalidArgumentError
from turnstore.server.storage.interface import StorageEngine
from turnstore.server.storage.values import ReadBudget, TurnCursor

THREADS_PER_PAGE: Final = 100
MAX_THREADS_PER_PAGE: Final = 1000
TURNS_PER_PAGE: Final = 50
MAX_TURNS_PER_PAGE: Final = 1000
# Stored event bytes per page of GET /v1/threads/{id}/turns, whatever its limit.
TURN_PAGE_BYTES: Final = 4 << 20


def _turns_json(
    engine: StorageEngine, thread_id: str, from_turn: int, after_position: int, limit: int
) -> bytes:
    """Up to ``limit`` turns from ``from_turn`` on, as JSON, within a page's bytes.

    A page stops after ``TURN_PAGE_BYTES`` of stored events (at least one
    event), so a turn may end one page and go on in the next:
    ``next_from_turn`` and ``next_after_position`` (null unless the page
    ended inside a turn) are where to go on, and the next page's first
    entry has the same turn number.
    """
    view = engine.view(thread_id)
    turns: list[dict[str, Any]] = []
    next_turn: int | None = None
    next_after: int | None = None
    page = ReadBudget(MAX_TURNS_PER_PAGE * 1024, TURN_PAGE_BYTES)
    cursor: TurnCursor | None = TurnCursor(turn=from_turn, after_position=after_position)
    while cursor is not None and next_turn is None:
        if page.spent:
            next_turn = cursor.turn
            next_after = cursor.after_position if cursor.after_position >= 0 else None
            break
        budget = ReadBudget(512, min(4 << 20, page.bytes_left))
        chunks, cursor = engine.read_turn_order(view, cursor, budget, True)
        for chunk in chunks:
            for value in chunk.events:
                page.spend(value)
            if turns and turns[-1]["turn"] == chunk.turn:
                turns[-1]["events"].extend(map(_fragment, chunk.events))
                continue
            if len(turns) == limit:
                next_turn = chunk.turn
                break
            turns.append(
                {
                    "turn": chunk.turn,
                    "finished": chunk.finished,
                    "events": [_fragment(value) for value in chunk.events],
                }
            )
    body = {
        "thread_id": thread_id,
        "epoch": view.epoch or 0,
        "turns": turns,
        "next_from_turn": next_turn,
        "next_after_position": next_after,
    }
    return orjson.dumps(body)


def _fragment(value: bytes) -> orjson.Fragment:
    return orjson.Fragment(sse.stored_event_json(value))


class JsonReads:
    """The JSON read routes, each over the engine as the request's credential sees it."""

    def __init__(
        self, executor: Executor, engine_for: Callable[[web.Request], StorageEngine]
    ) -> None:
        self._executor = executor
        self._engine_for = engine_for

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def threads(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/threads``: a page of threads, by id or most recent first."""
        query = request.query
        limit = int_param(query, "limit", THREADS_PER_PAGE, 1, MAX_THREADS_PER_PAGE)
        assert limit is not None
        order = query.get("order", "id")
        if order == "recent":
            threads = await self._run(self._engine_for(request).list_recent_threads, limit)
            next_after = None
        elif order == "id":
            threads = await self._run(
                self._engine_for(request).list_threads, query.get("after", ""), limit
            )
            next_after = threads[-1].thread_id if len(threads) == limit else None
        else:
            raise InvalidArgumentError("order", "must be 'id' or 'recent'")
        return json_response(
            {
                "threads": [
                    {
                        "thread_id": thread.thread_id,
                        "event_count": thread.event_count,
                        "finished_turns": thread.finished_turns,
                        "last_write_unix_nanos": thread.last_write_ns,
                    }
                    for thread in threads
                ],
                "next_after": next_after,
            }
        )

    async def turns(self, request: web.Request, thread_id: str) -> web.StreamResponse:
        """``GET /v1/threads/{thread_id}/turns``: a page of turns (see :func:`_turns_json`)."""
        query = request.query
        from_turn = int_param(query, "from_turn", 0, 0, MAX_TURN)
        limit = int_param(query, "limit", TURNS_PER_PAGE, 1, MAX_TURNS_PER_PAGE)
        after = int_param(query, "after_position", None, 0, MAX_TURN)
        body = await run_heavy(
            self._executor,
            _turns_json,
            self._engine_for(request),
            thread_id,
            from_turn or 0,
            -1 if after is None else after,
            limit or TURNS_PER_PAGE,
        )
        return web.Response(body=body, content_type="application/json")

    async def conversation(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/conversations/{key}``: a snapshot, written out without a second copy."""
        key = unquote_path(request.rel_url.raw_path[len("/v1/conversations/") :], "key")
        version = int_param(request.query, "version", None, 1, MAX_TURN)
        stored = await run_heavy(
            self._executor, self._engine_for(request).load_snapshot, key, version
        )
        if stored is None:
            return http_error(404, "not_found", "no snapshot under this key (or version)")
        head, data, tail = await self._run(readcost.snapshot_json_parts, key, stored)
        del stored
        # Written in pieces, each awaiting the transport: no second copy of the data.
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(head) + len(data) + len(tail)
        await response.prepare(request)
        try:
            await response.write(head)
            view = memoryview(data)
            for start in range(0, len(view), readcost.SNAPSHOT_WRITE_BYTES):
                await response.write(view[start : start + readcost.SNAPSHOT_WRITE_BYTES])
            await response.write(tail)
            await response.write_eof()
        except ConnectionError:
            pass  # the reader went away
        return response
