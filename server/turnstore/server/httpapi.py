"""The daemon's HTTP listener: event streams for browsers, JSON reads, the inspector.

Served by aiohttp on the same event loop as gRPC. Reads and JSON encoding run
on the read pool. Routes (thread ids and conversation keys percent-encoded,
matched on the raw path so ``/``, spaces and non-ASCII characters work):

- ``GET /v1/threads/{thread_id}/events``: the thread's replay as Server-Sent
  Events (:mod:`turnstore.server.sse`).
- ``GET /v1/threads``, ``GET /v1/threads/{thread_id}/turns``,
  ``GET /v1/conversations/{key}``: JSON reads.
- ``GET|POST|DELETE /v1/session``: browser sessions (:mod:`turnstore.server.sessions`).
- ``GET /``: the web inspector (static files shipped in ``web/``).

With a bearer token configured, every ``/v1`` route but ``/v1/session`` needs
``Authorization: Bearer <token>``, the session cookie or ``session=``; others
get 401. Unless remote access is allowed, requests must name a loopback host
(``Host``), which keeps pages on other sites out through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import ipaddress
import re
import socket
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import orjson
import structlog
from aiohttp import web

from turnstore.server import replaying, sse
from turnstore.server.connections import EveryInterval
from turnstore.server.errors import (
    DatabaseUnavailableError,
    EngineClosedError,
    EngineError,
    FollowerTooSlowError,
    InvalidArgumentError,
    ThreadClearedError,
)
from turnstore.server.followers import Followers, Sender
from turnstore.server.replaying import MAX_TURN, ReplayQuery
from turnstore.server.sessions import SessionSigner
from turnstore.server.storage import StorageEngine
from turnstore.server.values import ReadBudget, TurnCursor

log = structlog.get_logger("turnstore.http")

WEB_DIR: Final = Path(__file__).parent / "web"
SESSION_COOKIE: Final = "turnstore_session"
# StorageEngine exception -> HTTP status, looked up along the MRO (the reasons are
# those of errors.py, sent as the body's "error").
HTTP_STATUS_BY_ERROR: Final[dict[type[EngineError], int]] = {
    InvalidArgumentError: 400,
    ThreadClearedError: 409,
    EngineClosedError: 503,
    DatabaseUnavailableError: 503,
    EngineError: 500,
}
THREADS_PER_PAGE: Final = 100
MAX_THREADS_PER_PAGE: Final = 1000
TURNS_PER_PAGE: Final = 50
MAX_TURNS_PER_PAGE: Final = 1000
# Browsers reconnect this soon after a stream drops.
RETRY_MILLISECONDS: Final = 1000
_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_TRUE: Final = frozenset({"", "1", "true", "yes", "on"})
DEFAULT_MAX_CONNECTIONS: Final = 512


class _Refused(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is accepted, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.abort()


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP listener: ``listen`` is ``HOST:PORT`` (port 0 picks one).

    ``allow_origins`` are the exact origins (``scheme://host[:port]``) whose
    pages may call it across origins (CORS); none by default.
    ``max_connections`` caps the connections open at once (more are closed
    as soon as they are accepted; None: :data:`DEFAULT_MAX_CONNECTIONS`, the
    daemon fits it to its file limit); a connection without a complete
    request ``idle_seconds`` after it opened or after its last response is
    closed, which also ends headers trickled slowly (slowloris).
    """

    listen: str
    allow_origins: tuple[str, ...] = ()
    session_seconds: float = 3600.0
    heartbeat_seconds: float = 15.0
    max_connections: int | None = None
    idle_seconds: float = 30.0


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, reason: str, message: str) -> web.Response:
    return _json({"error": reason, "message": message}, status)


def http_status_for(error: EngineError) -> int:
    """The HTTP status of an engine error (500 for an unlisted class)."""
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS_BY_ERROR:
            return HTTP_STATUS_BY_ERROR[cls]
    return 500


def _loopback_host(host: str) -> bool:
    """Whether a Host header names this machine (``localhost``, 127.0.0.0/8, ``[::1]``)."""
    if host.startswith("["):
        name = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        name = host.partition(":")[0]
    else:
        name = host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _int(query: Any, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise InvalidArgumentError(name, f"must be an integer from {low} to {high}")
    return int(raw)


def _flag(query: Any, name: str, default: bool) -> bool:
    raw = query.get(name)
    if raw is None:
        return default
    if raw.lower() in _FALSE:
        return False
    if raw.lower() in _TRUE:
        return True
    raise InvalidArgumentError(name, "must be 1/0, true/false, yes/no or on/off")


def _unquote(raw: str, field: str) -> str:
    if _BAD_ESCAPE.search(raw):
        raise InvalidArgumentError(field, "has a % not followed by two hex digits")
    try:
        text = urllib.parse.unquote(raw, errors="strict")
    except UnicodeDecodeError as error:
        raise InvalidArgumentError(field, "is not percent-encoded UTF-8") from error
    if not text:
        raise InvalidArgumentError(field, "must not be empty")
    return text


def _recent_threads(engine: StorageEngine, limit: int) -> list[Any]:
    """The ``limit`` most recently written threads: a scan of every thread."""
    newest: list[tuple[int, str, Any]] = []
    after = ""
    while True:
        page = engine.list_threads(after, 1000)
        for thread in page:
            entry = (thread.last_write_ns, thread.thread_id, thread)
            if len(newest) < limit:
                heapq.heappush(newest, entry)
            else:
                heapq.heappushpop(newest, entry)
        if len(page) < 1000:
            break
        after = page[-1].thread_id
    return [entry[2] for entry in sorted(newest, reverse=True)]


def _turns_json(engine: StorageEngine, thread_id: str, from_turn: int, limit: int) -> bytes:
    """Up to ``limit`` whole turns from ``from_turn`` on, as JSON, and where to go on."""
    view = engine.view(thread_id)
    turns: list[dict[str, Any]] = []
    next_turn: int | None = None
    cursor: TurnCursor | None = TurnCursor(turn=from_turn)
    while cursor is not None and next_turn is None:
        chunks, cursor = engine.read_turn_order(view, cursor, ReadBudget(512, 4 << 20), True)
        for chunk in chunks:
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
        "epoch": view.thread_number or 0,
        "turns": turns,
        "next_from_turn": next_turn,
    }
    return orjson.dumps(body)


def _fragment(value: bytes) -> orjson.Fragment:
    return orjson.Fragment(sse.stored_event_json(value))


def _snapshot_json(engine: StorageEngine, key: str, version: int | None) -> bytes | None:
    stored = engine.load_snapshot(key, version)
    if stored is None:
        return None
    body: dict[str, Any] = {
        "key": key,
        "version": stored.version,
        "content_type": stored.content_type,
        "saved_at_unix_nanos": stored.saved_at_ns,
    }
    try:
        body["snapshot"] = orjson.loads(stored.data)
    except orjson.JSONDecodeError as error:
        body["snapshot"] = None
        body["body_error"] = f"not strict JSON: {error}"
        body["raw_body"] = stored.data.decode("utf-8", "replace")
    return orjson.dumps(body)


class HttpApi:
    """The aiohttp application over the engine, and its listener.

    ``auth_token`` None leaves every route open (loopback only by default,
    like gRPC). ``tls`` serves HTTPS; with client verification on, browsers
    must present a certificate as gRPC clients do.
    """

    def __init__(
        self,
        engine: StorageEngine,
        executor: Executor,
        followers: Followers,
        config: HttpConfig,
        *,
        auth_token: str | None,
        tls: ssl.SSLContext | None,
        allow_remote: bool,
    ) -> None:
        self._engine = engine
        self._executor = executor
        self._followers = followers
        self._config = config
        self._signer = (
            SessionSigner(auth_token, config.session_seconds) if auth_token is not None else None
        )
        self._tls = tls
        self._allow_remote = allow_remote
        self._origins = frozenset(origin.rstrip("/") for origin in config.allow_origins)
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._refused = EveryInterval("http_connections_refused")
        self.address = ""

    def application(self) -> web.Application:
        """The routes and middlewares."""
        app = web.Application(middlewares=[self._guard])
        app.on_response_prepare.append(self._headers)
        app.router.add_get("/", self._index)
        app.router.add_static("/web/", WEB_DIR, follow_symlinks=False)
        app.router.add_route("*", "/v1/session", self._session)
        app.router.add_get("/v1/threads", self._threads, allow_head=False)
        app.router.add_get("/v1/threads/{rest:.+}", self._thread_route, allow_head=False)
        app.router.add_get("/v1/conversations/{rest:.+}", self._conversation, allow_head=False)
        return app

    async def start(self) -> str:
        """Bind and serve; the bound ``scheme://host:port``."""
        host, _, port = self._config.listen.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if host == "localhost":
            host = "127.0.0.1"
        try:
            sock = socket.create_server((host, int(port)), family=family)
        except OSError as error:
            raise RuntimeError(f"cannot listen on {self._config.listen!r}: {error}") from error
        # aiohttp's keep-alive timer runs from the connection's start and
        # from each response, and partial headers do not push it back: it is
        # both the idle and the header timeout.
        self._runner = web.AppRunner(
            self.application(),
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self._config.idle_seconds,
            shutdown_timeout=5.0,
        )
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        cap = self._config.max_connections or DEFAULT_MAX_CONNECTIONS

        def connection() -> asyncio.Protocol:
            if len(server.connections) >= cap:
                self._refused.note(max_connections=cap)
                return _Refused()
            return server()

        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(connection, sock=sock, ssl=self._tls)
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        self.address = f"{'https' if self._tls else 'http'}://{shown}:{bound}"
        return self.address

    async def stop(self) -> None:
        """Close the listener and every open stream (followers end first)."""
        if self._listener is not None:
            self._listener.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    # -- access --------------------------------------------------------------

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not self._allow_remote and not _loopback_host(request.host):
            return _error(403, "host_not_allowed", "this daemon answers only loopback host names")
        if request.method == "OPTIONS":
            allowed = request.headers.get("Origin") in self._origins
            response = web.Response(status=204 if allowed else 403)
            if allowed:
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE"
                response.headers["Access-Control-Allow-Headers"] = (
                    "Authorization, Last-Event-ID, Content-Type"
                )
                response.headers["Access-Control-Max-Age"] = "600"
            return response
        public = request.path in ("/", "/v1/session") or request.path.startswith("/web/")
        if not public and not self._authenticated(request):
            response = _error(
                401,
                "unauthenticated",
                "missing or wrong credentials: send 'Authorization: Bearer <token>' or "
                "a session from POST /v1/session",
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="turnstore"'
            return response
        try:
            return await handler(request)
        except EngineError as error:
            return _error(http_status_for(error), error.reason, str(error))

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """Add CORS and safety headers just before a response's headers go out.

        An event stream sends its headers when it starts, long before its
        handler returns, so a middleware would be too late.
        """
        origin = request.headers.get("Origin")
        if origin is not None and origin in self._origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Vary"] = "Origin"
        response.headers.setdefault("X-Content-Type-Options", "nosniff")

    def _authenticated(self, request: web.Request) -> bool:
        if self._signer is None:
            return True
        return (
            self._signer.bearer_ok(request.headers.get("Authorization"))
            or self._signer.valid(request.cookies.get(SESSION_COOKIE))
            or self._signer.valid(request.query.get("session"))
        )

    async def _session(self, request: web.Request) -> web.StreamResponse:
        """GET: whether auth is on and this request passes; POST: a session; DELETE: none."""
        if request.method == "GET":
            return _json(
                {"auth": self._signer is not None, "authenticated": self._authenticated(request)}
            )
        if request.method == "DELETE":
            response = _json({"auth": self._signer is not None})
            response.del_cookie(SESSION_COOKIE, path="/")
            return response
        if request.method != "POST":
            return _error(405, "method_not_allowed", "use GET, POST or DELETE")
        if self._signer is None:
            return _json({"auth": False, "session": None, "expires_at": None})
        if not self._signer.bearer_ok(request.headers.get("Authorization")):
            response = _error(401, "unauthenticated", "POST /v1/session needs the bearer token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="turnstore"'
            return response
        token, expiry = self._signer.issue()
        response = _json({"auth": True, "session": token, "expires_at": expiry})
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=int(self._signer.ttl_seconds),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self._tls is not None,
        )
        return response

    # -- reads ---------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        response = web.FileResponse(WEB_DIR / "index.html")
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
        )
        return response

    async def _threads(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        limit = _int(query, "limit", THREADS_PER_PAGE, 1, MAX_THREADS_PER_PAGE)
        assert limit is not None
        order = query.get("order", "id")
        if order == "recent":
            threads = await self._run(_recent_threads, self._engine, limit)
            next_after = None
        elif order == "id":
            threads = await self._run(self._engine.list_threads, query.get("after", ""), limit)
            next_after = threads[-1].thread_id if len(threads) == limit else None
        else:
            raise InvalidArgumentError("order", "must be 'id' or 'recent'")
        return _json(
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

    async def _thread_route(self, request: web.Request) -> web.StreamResponse:
        raw = request.rel_url.raw_path[len("/v1/threads/") :]
        encoded, _, action = raw.rpartition("/")
        thread_id = _unquote(encoded, "thread_id")
        if action == "events":
            return await self._events(request, thread_id)
        if action == "turns":
            query = request.query
            from_turn = _int(query, "from_turn", 0, 0, MAX_TURN)
            limit = _int(query, "limit", TURNS_PER_PAGE, 1, MAX_TURNS_PER_PAGE)
            body = await self._run(_turns_json, self._engine, thread_id, from_turn, limit)
            return web.Response(body=body, content_type="application/json")
        return _error(404, "not_found", "use /v1/threads/{thread_id}/events or /turns")

    async def _conversation(self, request: web.Request) -> web.StreamResponse:
        key = _unquote(request.rel_url.raw_path[len("/v1/conversations/") :], "key")
        version = _int(request.query, "version", None, 1, MAX_TURN)
        body = await self._run(_snapshot_json, self._engine, key, version)
        if body is None:
            return _error(404, "not_found", "no snapshot under this key (or version)")
        return web.Response(body=body, content_type="application/json")

    # -- the event stream ----------------------------------------------------

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
        epoch = _int(query, "epoch", None, 0, MAX_TURN)
        types = frozenset(
            name for value in query.getall("types", []) for name in value.split(",") if name
        )
        replay = ReplayQuery(
            thread_id=thread_id,
            start_position=cursor.after_position + 1,
            epoch=cursor.epoch if cursor.epoch is not None else (epoch or None),
            finish_seq=cursor.finish_seq,
            follow=_flag(query, "follow", True),
            from_turn=_int(query, "from_turn", 0, 0, MAX_TURN) or 0,
            to_turn=_int(query, "to_turn", MAX_TURN, 0, MAX_TURN) or 0,
            event_types=types,
            until_turn_finished=_int(query, "until_turn_finished", None, 0, MAX_TURN),
        )
        replay.check()
        return _StreamRequest(replay, replace(cursor, epoch=replay.epoch), bool(header))

    async def _events(self, request: web.Request, thread_id: str) -> web.StreamResponse:
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

        batches = replaying.replay(self._engine, self._run, self._followers, query, end_too_slow)
        try:
            batch = await anext(batches, None)
        except BaseException:
            await batches.aclose()
            raise
        if asked.resumed and (
            batch is None or (batch.final and not (batch.events or batch.finishes or batch.cleared))
        ):
            # Nothing new and nothing more will come: 204 stops EventSource.
            await batches.aclose()
            return web.Response(status=204)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache, no-transform",
                "X-Accel-Buffering": "no",
            }
        )
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
                while not pending.done():
                    await asyncio.wait((pending,), timeout=self._config.heartbeat_seconds)
                    if not pending.done():
                        await response.write(sse.HEARTBEAT)
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


@dataclass(frozen=True)
class _StreamRequest:
    query: ReplayQuery
    cursor: sse.StreamCursor
    resumed: bool
