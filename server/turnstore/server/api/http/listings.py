"""Listings the web inspector pages through: threads and keys by prefix, changes, versions.

Routes (added by :func:`add_routes`; every one reads through the request's
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

import re
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import orjson
from aiohttp import web

from turnstore.server.replay.replaying import MAX_TURN
from turnstore.server.storage.errors import InvalidArgumentError
from turnstore.server.storage.interface import StorageEngine
from turnstore.server.storage.values import KeySummary, ThreadSummary

PER_PAGE: Final = 100
MAX_PER_PAGE: Final = 1000
# The first read of a change listing: most polls find a few threads changed.
FIRST_CHANGES_READ: Final = 16

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Run = Callable[..., Awaitable[Any]]
EngineFor = Callable[[web.Request], StorageEngine]
S = TypeVar("S", ThreadSummary, KeySummary)
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _below(text: str) -> str:
    """A string sorting just before ``text`` and everything that starts with it.

    The same as the scoped engine's: both engines order ids by their UTF-8
    bytes, which is the order of Python's code points, and only strings
    starting with the result (ending in U+10FFFF) sort between it and ``text``.
    """
    last = ord(text[-1])
    return text[:-1] + chr(last - 1) + "\U0010ffff" if last else text[:-1]


def with_prefix(
    fetch: Callable[[str, int], list[S]],
    id_of: Callable[[S], str],
    prefix: str,
    after: str,
    limit: int,
) -> tuple[list[S], str | None]:
    """Up to ``limit`` entries whose id starts with ``prefix``, after ``after``, in id order.

    Seeks to the prefix and reads its range only (one entry past it at
    most, plus ids sorting between ``_below(prefix)`` and the prefix, which
    start with ``_below(prefix)``: practically none). Returns the entries
    and the next page's ``after`` (None when no entry follows).
    """
    start = max(after, _below(prefix)) if prefix else after
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
    engine: StorageEngine, since_ns: int, limit: int
) -> tuple[list[ThreadSummary], bool]:
    """The threads written at or after ``since_ns``, newest first, and whether more did.

    Reads the recency index from its newest end, a few entries first and
    more only while every entry read is new enough.
    """
    ask = min(FIRST_CHANGES_READ, limit + 1)
    while True:
        recent = engine.list_recent_threads(ask)
        changed = [thread for thread in recent if thread.last_write_ns >= since_ns]
        if len(changed) < len(recent) or len(recent) < ask:
            return changed[:limit], len(changed) > limit
        if ask > limit:
            return changed[:limit], True
        ask = min(ask * 4, limit + 1)


def _thread_json(thread: ThreadSummary) -> dict[str, Any]:
    return {
        "thread_id": thread.thread_id,
        "event_count": thread.event_count,
        "finished_turns": thread.finished_turns,
        "last_write_unix_nanos": thread.last_write_ns,
    }


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _limit(query: Any) -> int:
    raw = query.get("limit", "")
    if raw == "":
        return PER_PAGE
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PER_PAGE:
        raise InvalidArgumentError("limit", f"must be an integer from 1 to {MAX_PER_PAGE}")
    return int(raw)


def _bounded(query: Any, name: str, max_bytes: int) -> str:
    """A text parameter ("" when absent), refused when longer than an id may be."""
    value = str(query.get(name, ""))
    if len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise InvalidArgumentError(name, f"must be at most {max_bytes} bytes of UTF-8")
    return value


def add_routes(
    app: web.Application, older_threads: Handler, run: Run, engine_for: EngineFor
) -> None:
    """Register the listings; ``older_threads`` answers ``/v1/threads`` without their parameters."""

    async def threads(request: web.Request) -> web.StreamResponse:
        query = request.query
        if "prefix" not in query and "changed_since" not in query:
            return await older_threads(request)
        engine = engine_for(request)
        limit = _limit(query)
        if "changed_since" in query:
            raw = query["changed_since"]
            if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_TURN:
                raise InvalidArgumentError("changed_since", "must be Unix nanoseconds (an integer)")
            if "prefix" in query or "after" in query:
                raise InvalidArgumentError("changed_since", "takes neither prefix nor after")
            changed, truncated = await run(changed_since, engine, int(raw), limit)
            return _json({"threads": [_thread_json(t) for t in changed], "truncated": truncated})
        if query.get("order", "id") != "id":
            raise InvalidArgumentError("order", "a prefix lists in id order: leave order out")
        max_bytes = engine.limits.max_thread_id_bytes
        prefix = _bounded(query, "prefix", max_bytes)
        after = _bounded(query, "after", max_bytes)
        found, next_after = await run(
            with_prefix, engine.list_threads, _thread_id, prefix, after, limit
        )
        return _json({"threads": [_thread_json(t) for t in found], "next_after": next_after})

    async def conversations(request: web.Request) -> web.StreamResponse:
        query = request.query
        engine = engine_for(request)
        limit = _limit(query)
        max_bytes = engine.limits.max_key_bytes
        prefix = _bounded(query, "prefix", max_bytes)
        after = _bounded(query, "after", max_bytes)
        found, next_after = await run(with_prefix, engine.list_keys, _key, prefix, after, limit)
        return _json(
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

    async def versions(request: web.Request) -> web.StreamResponse:
        raw = request.rel_url.raw_path[len("/v1/versions/") :]
        try:
            if _BAD_ESCAPE.search(raw):
                raise UnicodeDecodeError("utf-8", b"", 0, 1, "a % without two hex digits")
            key = urllib.parse.unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise InvalidArgumentError("key", "is not percent-encoded UTF-8") from None
        kept = await run(engine_for(request).list_snapshot_versions, key)
        if not kept:
            return _json({"error": "not_found", "message": "no snapshot under this key"}, 404)
        return _json(
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

    app.router.add_get("/v1/threads", threads, allow_head=False)
    app.router.add_get("/v1/conversations", conversations, allow_head=False)
    app.router.add_get("/v1/versions/{rest:.+}", versions, allow_head=False)


def _thread_id(thread: ThreadSummary) -> str:
    return thread.thread_id


def _key(key: KeySummary) -> str:
    return key.key
