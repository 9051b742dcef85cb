"""Listings the web inspector pages through: threads and keys by prefix, changes, versions.

Routes (added by :meth:`Listings.add_routes`; every one reads through the request's
scoped engine, so a scoped session lists only what its scope covers and
reads a key outside it as a missing one):

- ``GET /v1/threads?prefix=P&after=A&limit=N``: threads whose id starts
  with ``P``, in byte order of their ids, after ``A``; ``next_after`` is
  the cursor of the next page (null after the last). Without ``prefix``
  and ``changed_since`` the request is the older listing's
  (``order=id|recent``), answered as before.
- ``GET /v1/threads?changed_since=NS&limit=N``: the threads written at or
  after ``NS`` (Unix nanoseconds, as in ``last_write_unix_nanos``), most
  recent first, read along the recency index: it costs the threads that
  changed, not the threads held. ``truncated`` is true when more than
  ``limit`` changed (list afresh then).
- ``GET /v1/conversations?prefix=P&after=A&limit=N``: conversation keys
  holding a snapshot, with their current version, in key order.
- ``GET /v1/versions/{key}``: the kept versions of a key, newest first,
  without their data (404 when the key holds none, or is outside the scope).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, Final, TypeVar

from aiohttp import web

from turnstore.server.access.scoped_listing import below_prefix
from turnstore.server.api.http.common import http_error, int_param, json_response, unquote_path
from turnstore.server.api.http.credentials import ACCESS
from turnstore.server.replay.replaying import MAX_TURN
from turnstore.server.storage.errors import InvalidArgumentError
from turnstore.server.storage.interface import StorageEngine
from turnstore.server.storage.values import KeySummary, ThreadSummary

PER_PAGE: Final = 100
MAX_PER_PAGE: Final = 1000
# The first read of a change listing: most polls find a few threads changed.
FIRST_CHANGES_READ: Final = 16
# Entries of the whole store's recency index one change listing reads at most.
MAX_CHANGES_READ: Final = 4096

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
EngineFor = Callable[[web.Request], StorageEngine]
S = TypeVar("S", ThreadSummary, KeySummary)


def with_prefix(
    fetch: Callable[[str, int], list[S]],
    id_of: Callable[[S], str],
    prefix: str,
    after: str,
    limit: int,
) -> tuple[list[S], str | None]:
    """Up to ``limit`` entries whose id starts with ``prefix``, after ``after``, in id order.

    Seeks to the prefix and reads its range only (one entry past it at
    most, plus ids sorting between ``below_prefix(prefix)`` and the prefix, which
    start with ``below_prefix(prefix)``: practically none). Returns the entries
    and the next page's ``after`` (None when no entry follows).
    """
    start = max(after, below_prefix(prefix)) if prefix else after
    found: list[S] = []
    while True:
        page = fetch(start, limit + 1)
        for entry in page:
            entry_id = id_of(entry)
            if entry_id.startswith(prefix):
                found.append(entry)
                if len(found) > limit:
                    return found[:limit], id_of(found[limit - 1])
            elif entry_id > prefix:
                return found, None
        if len(page) < limit + 1:
            return found, None
        start = id_of(page[-1])


def changed_since(
    engine: StorageEngine,
    covers: Callable[[str], bool] | None,
    scoped_engine: StorageEngine,
    since_ns: int,
    limit: int,
) -> tuple[list[ThreadSummary], bool]:
    """The covered threads written at or after ``since_ns``, newest first, and whether more did.

    Reads the whole store's recency index (``engine``) from its newest end, a
    few entries first and more only while every entry read is new enough,
    and keeps those ``covers`` lets through (None: all): it costs the
    threads written since, whoever wrote them. A scope covering few threads
    would make a walk of the scoped engine read the index down to them, on
    every poll. When more than :data:`MAX_CHANGES_READ` threads changed, the
    answer comes from ``scoped_engine``'s own recency listing instead, which
    gives the same answer: whether others wrote much never shows.
    """
    ask = min(FIRST_CHANGES_READ, limit + 1)
    while True:
        recent = engine.list_recent_threads(ask)
        fresh = [thread for thread in recent if thread.last_write_ns >= since_ns]
        done = len(fresh) < len(recent) or len(recent) < ask
        kept = fresh if covers is None else [t for t in fresh if covers(t.thread_id)]
        if len(kept) > limit:
            return kept[:limit], True
        if done:
            return kept, False
        if ask >= MAX_CHANGES_READ:
            break
        ask = min(ask * 4, MAX_CHANGES_READ)
    newest = scoped_engine.list_recent_threads(limit + 1)
    kept = [thread for thread in newest if thread.last_write_ns >= since_ns]
    return kept[:limit], len(kept) > limit


def _thread_json(thread: ThreadSummary) -> dict[str, Any]:
    return {
        "thread_id": thread.thread_id,
        "event_count": thread.event_count,
        "finished_turns": thread.finished_turns,
        "last_write_unix_nanos": thread.last_write_ns,
    }


def _bounded(query: Any, name: str, max_bytes: int) -> str:
    """A text parameter ("" when absent), refused when longer than an id may be."""
    value = str(query.get(name, ""))
    if len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise InvalidArgumentError(name, f"must be at most {max_bytes} bytes of UTF-8")
    return value


class Listings:
    """The listing routes, each over the engine as the request's credential sees it."""

    def __init__(self, executor: Executor, engine_for: EngineFor, engine: StorageEngine) -> None:
        self._executor = executor
        self._engine_for = engine_for
        # Unscoped: only the change listing reads it, and returns only what the scope covers.
        self._engine = engine

    def add_routes(self, app: web.Application, older_threads: Handler) -> None:
        """Register the routes; ``older_threads`` answers ``/v1/threads`` without them."""

        async def threads(request: web.Request) -> web.StreamResponse:
            query = request.query
            if "prefix" not in query and "changed_since" not in query:
                return await older_threads(request)
            return await self.threads(request)

        app.router.add_get("/v1/threads", threads, allow_head=False)
        app.router.add_get("/v1/conversations", self.conversations, allow_head=False)
        app.router.add_get("/v1/versions/{rest:.+}", self.versions, allow_head=False)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def threads(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/threads?prefix=...`` or ``?changed_since=...`` (see the module)."""
        query = request.query
        engine = self._engine_for(request)
        limit = int_param(query, "limit", PER_PAGE, 1, MAX_PER_PAGE)
        assert limit is not None
        if "changed_since" in query:
            since = int_param(query, "changed_since", None, 0, MAX_TURN)
            if since is None:
                raise InvalidArgumentError("changed_since", "must be Unix nanoseconds")
            if "prefix" in query or "after" in query:
                raise InvalidArgumentError("changed_since", "takes neither prefix nor after")
            scope = request[ACCESS].scope
            covers = None if scope.all_threads else scope.covers_thread
            changed, truncated = await self._run(
                changed_since, self._engine, covers, engine, since, limit
            )
            return json_response(
                {"threads": [_thread_json(t) for t in changed], "truncated": truncated}
            )
        if query.get("order", "id") != "id":
            raise InvalidArgumentError("order", "a prefix lists in id order: leave order out")
        max_bytes = engine.limits.max_thread_id_bytes
        prefix = _bounded(query, "prefix", max_bytes)
        after = _bounded(query, "after", max_bytes)
        found, next_after = await self._run(
            with_prefix, engine.list_threads, _thread_id, prefix, after, limit
        )
        return json_response(
            {"threads": [_thread_json(t) for t in found], "next_after": next_after}
        )

    async def conversations(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/conversations?prefix=&after=&limit=``: keys holding a snapshot."""
        query = request.query
        engine = self._engine_for(request)
        limit = int_param(query, "limit", PER_PAGE, 1, MAX_PER_PAGE)
        assert limit is not None
        max_bytes = engine.limits.max_key_bytes
        prefix = _bounded(query, "prefix", max_bytes)
        after = _bounded(query, "after", max_bytes)
        found, next_after = await self._run(
            with_prefix, engine.list_keys, _key, prefix, after, limit
        )
        return json_response(
            {
                "conversations": [
                    {
                        "key": key.key,
                        "current_version": key.current_version,
                        "last_write_unix_nanos": key.last_write_ns,
                    }
                    for key in found
                ],
                "next_after": next_after,
            }
        )

    async def versions(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/versions/{key}``: the kept versions, newest first, without their data."""
        key = unquote_path(request.rel_url.raw_path[len("/v1/versions/") :], "key")
        kept = await self._run(self._engine_for(request).list_snapshot_versions, key)
        if not kept:
            return http_error(404, "not_found", "no snapshot under this key")
        return json_response(
            {
                "key": key,
                "versions": [
                    {
                        "version": version.version,
                        "content_type": version.content_type,
                        "size_bytes": version.size_bytes,
                        "saved_at_unix_nanos": version.saved_at_ns,
                    }
                    for version in kept
                ],
            }
        )


def _thread_id(thread: ThreadSummary) -> str:
    return thread.thread_id


def _key(key: KeySummary) -> str:
    return key.key
