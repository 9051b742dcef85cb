"""The daemon's HTTP listener: event streams for browsers, JSON reads, the inspector.

Served by aiohttp on the same event loop as gRPC. Reads and JSON encoding run
on the read pool. Routes (thread ids and conversation keys percent-encoded,
matched on the raw path so ``/``, spaces and non-ASCII characters work):

- ``GET /v1/threads/{thread_id}/events``: the thread's replay as Server-Sent
  Events (:mod:`turnstore.server.api.http.sse`).
- ``GET /v1/threads``, ``GET /v1/threads/{thread_id}/turns``,
  ``GET /v1/conversations/{key}``: JSON reads.
- ``GET|POST|DELETE /v1/session``: browser sessions (:mod:`turnstore.server.access.sessions`),
  scoped (:mod:`turnstore.server.access.scopes`) and revocable.
- ``GET /``: the web inspector (static files shipped in ``web/``).

With bearer tokens configured, every ``/v1`` route but ``/v1/session`` needs
``Authorization: Bearer <token>``, the session cookie or ``session=``; others
get 401. Each credential has a scope: reads outside it answer as for a
missing thread or key (:mod:`turnstore.server.access.scoped_engine`), and listings
leave out what it does not cover. Unless remote access is allowed, requests
must name a loopback host (``Host``), which keeps pages on other sites out
through DNS rebinding.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
import structlog
from aiohttp import web

from turnstore.server.access.scoped_engine import scoped
from turnstore.server.access.scopes import FULL, Scope, ScopeError, ScopeTooWideError, parse_scope
from turnstore.server.access.sessions import Revocations, Session, SessionKeys, SessionSigner
from turnstore.server.api import readcost
from turnstore.server.api.connections import EveryInterval
from turnstore.server.api.http import sse
from turnstore.server.api.readcost import run_heavy
from turnstore.server.replay import replaying
from turnstore.server.replay.followers import Followers, Sender
from turnstore.server.replay.replaying import MAX_TURN, ReplayQuery
from turnstore.server.storage.errors import (
    CursorOutOfRangeError,
    DatabaseUnavailableError,
    EngineClosedError,
    EngineError,
    FollowerTooSlowError,
    InvalidArgumentError,
    PermissionDeniedError,
    ThreadClearedError,
)
from turnstore.server.storage.interface import StorageEngine
from turnstore.server.storage.values import ReadBudget, TurnCursor

if TYPE_CHECKING:
    from turnstore.server.access.pg_revocations import PostgresRevocations

log = structlog.get_logger("turnstore.http")

WEB_DIR: Final = Path(__file__).parent / "web"
SESSION_COOKIE: Final = "turnstore_session"
# StorageEngine exception -> HTTP status, looked up along the MRO (the reasons are
# those of errors.py, sent as the body's "error").
HTTP_STATUS_BY_ERROR: Final[dict[type[EngineError], int]] = {
    InvalidArgumentError: 400,
    PermissionDeniedError: 403,
    ThreadClearedError: 409,
    EngineClosedError: 503,
    DatabaseUnavailableError: 503,
    CursorOutOfRangeError: 416,
    EngineError: 500,
}
THREADS_PER_PAGE: Final = 100
MAX_THREADS_PER_PAGE: Final = 1000
TURNS_PER_PAGE: Final = 50
MAX_TURNS_PER_PAGE: Final = 1000
# Stored event bytes per page of GET /v1/threads/{id}/turns, whatever its limit.
TURN_PAGE_BYTES: Final = 4 << 20
# Bytes of a POST /v1/session body (more could not fit in a session token).
MAX_SESSION_BODY_BYTES: Final = 64 << 10
ACCESS: Final = "turnstore_access"
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


class HttpApi:
    """The aiohttp application over the engine, and its listener.

    No ``auth_tokens`` leaves every route open (loopback only by default,
    like gRPC); else each token, with its scope, may read and mint sessions
    within that scope. Revoked sessions are kept in ``revocations_path``
    (in memory only when None), or with ``revocations_dsn`` in that
    PostgreSQL database, shared by a fleet
    (:mod:`turnstore.server.access.pg_revocations`). ``tls`` serves HTTPS; with
    client verification on, browsers must present a certificate as gRPC
    clients do.
    """

    def __init__(
        self,
        engine: StorageEngine,
        executor: Executor,
        followers: Followers,
        config: HttpConfig,
        *,
        auth_tokens: Sequence[tuple[str, Scope]],
        tls: ssl.SSLContext | None,
        allow_remote: bool,
        revocations_path: Path | None = None,
        revocations_dsn: str | None = None,
    ) -> None:
        self._engine = engine
        self._executor = executor
        self._followers = followers
        self._config = config
        self._keys = (
            SessionKeys(
                SessionSigner(token, config.session_seconds, scope=scope)
                for token, scope in auth_tokens
            )
            if auth_tokens
            else None
        )
        self._revocations: Revocations | PostgresRevocations | None = None
        if auth_tokens and revocations_dsn is not None:
            # Imported only here: psycopg is loaded only by daemons on PostgreSQL.
            from turnstore.server.access.pg_revocations import PostgresRevocations

            self._revocations = PostgresRevocations(revocations_dsn)
        elif auth_tokens:
            self._revocations = Revocations(revocations_path)
        # Resolved (then replaced) whenever sessions are revoked: wakes the
        # open streams of sessions so that a revoked one ends at once.
        self._revoked_now: asyncio.Future[None] | None = None
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
        app.cleanup_ctx.append(self._refreshing_revocations)
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

    async def _refreshing_revocations(self, app: web.Application) -> AsyncIterator[None]:
        """While serving, re-read a fleet's revocations (PostgreSQL) every few seconds."""
        revocations = self._revocations
        if not isinstance(revocations, Revocations) and revocations is not None:
            refresh = revocations.refresh

            async def refresh_once() -> None:
                try:
                    if await self._run(refresh):
                        self._signal_revocation()
                except Exception as error:  # the database is away: keep the last copy
                    log.warning("revocations_not_refreshed", error=str(error))

            async def refreshing() -> None:
                while True:
                    await asyncio.sleep(revocations.refresh_seconds)
                    await refresh_once()

            # Before the listener serves: no revoked session passes after a restart.
            await refresh_once()

            task = asyncio.create_task(refreshing())
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return
        yield

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
        access = self._access(request)
        if access is not None:
            request[ACCESS] = access
        if not public and access is None:
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

    def _access(self, request: web.Request) -> _Access | None:
        """What the request's credential grants: bearer header, cookie or ``session=``.

        None when it presents none that is valid (a revoked or expired
        session is none). With auth off, everything.
        """
        if self._keys is None or self._revocations is None:
            return _Access(FULL, None, None)
        signer = self._keys.bearer(request.headers.get("Authorization"))
        if signer is not None:
            return _Access(signer.scope, None, signer)
        for token in (request.cookies.get(SESSION_COOKIE), request.query.get("session")):
            session = self._keys.check(token)
            if session is not None and not self._revocations.revoked(session.session_id):
                return _Access(session.scope, session, None)
        return None

    def _live(self, session: Session | None) -> bool:
        """Whether a stream opened with ``session`` may go on (not expired, not revoked)."""
        if session is None or self._revocations is None:
            return True
        return session.expires_at > time.time() and not self._revocations.revoked(
            session.session_id
        )

    def _revocation_signal(self) -> asyncio.Future[None]:
        """A future resolved at the next revocation this daemon learns of."""
        if self._revoked_now is None or self._revoked_now.done():
            self._revoked_now = asyncio.get_running_loop().create_future()
        return self._revoked_now

    def _signal_revocation(self) -> None:
        if self._revoked_now is not None and not self._revoked_now.done():
            self._revoked_now.set_result(None)

    def _wait_seconds(self, session: Session | None) -> float:
        """How long a stream waits for the next batch before its next heartbeat or check.

        A heartbeat, or less when the session expires sooner, so that the
        stream ends right at the expiry (and within a heartbeat of a revocation).
        """
        heartbeat = self._config.heartbeat_seconds
        if session is None:
            return heartbeat
        return max(0.01, min(heartbeat, session.expires_at - time.time()))

    def _engine_for(self, request: web.Request) -> StorageEngine:
        """The engine as the request's credential sees it (the guard set it)."""
        access: _Access = request[ACCESS]
        return scoped(self._engine, access.scope)

    async def _session(self, request: web.Request) -> web.StreamResponse:
        """GET: whether auth is on and this request passes; POST: a session; DELETE: revoke."""
        access: _Access | None = request.get(ACCESS)
        auth = self._keys is not None
        if request.method == "GET":
            state: dict[str, Any] = {"auth": auth, "authenticated": access is not None}
            if access is not None and auth:
                state["scope"] = access.scope.to_json()
                state["expires_at"] = access.session.expires_at if access.session else None
            return _json(state)
        if request.method == "DELETE":
            return await self._revoke(request, access)
        if request.method != "POST":
            return _error(405, "method_not_allowed", "use GET, POST or DELETE")
        if self._keys is None:
            return _json({"auth": False, "session": None, "expires_at": None})
        if access is None or access.signer is None:
            response = _error(401, "unauthenticated", "POST /v1/session needs a bearer token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="turnstore"'
            return response
        try:
            asked = await self._requested_scope(request)
            token, expiry = access.signer.issue(asked)
        except ScopeTooWideError as error:
            return _error(403, PermissionDeniedError.reason, str(error))
        except ScopeError as error:
            return _error(400, InvalidArgumentError.reason, str(error))
        scope = asked if asked is not None else access.signer.scope
        response = _json(
            {"auth": True, "session": token, "expires_at": expiry, "scope": scope.to_json()}
        )
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=int(access.signer.ttl_seconds),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self._tls is not None,
        )
        return response

    async def _requested_scope(self, request: web.Request) -> Scope | None:
        """The scope a POST /v1/session body asks for; None without a body (or ``scope``).

        Raises ScopeError for a body that is too long, not a JSON object,
        has fields other than ``scope``, or a malformed scope.
        """
        if request.content_length is not None and request.content_length > MAX_SESSION_BODY_BYTES:
            raise ScopeError(f"body: over the limit of {MAX_SESSION_BODY_BYTES} bytes")
        body = await request.content.read(MAX_SESSION_BODY_BYTES + 1)
        if len(body) > MAX_SESSION_BODY_BYTES:
            raise ScopeError(f"body: over the limit of {MAX_SESSION_BODY_BYTES} bytes")
        if not body.strip():
            return None
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise ScopeError(f"body: not JSON ({error})") from None
        if not isinstance(value, dict) or set(value) - {"scope"}:
            raise ScopeError('body: must be a JSON object with at most the field "scope"')
        return parse_scope(value["scope"]) if "scope" in value else None

    async def _revoke(self, request: web.Request, access: _Access | None) -> web.StreamResponse:
        """Revoke the presented session (cookie or ``session=``) and clear the cookie.

        With a bearer token instead, revoke the session named by the body's
        ``session`` (a backend ending its user's session). Answers
        ``{"auth": ..., "revoked": true|false}``; a session that is invalid
        or expired already is not revoked again.
        """
        revoked = False
        if self._keys is not None and self._revocations is not None:
            session = access.session if access is not None else None
            if access is not None and access.signer is not None:
                session = await self._named_session(request)
                if session is not None and not session.scope.within(access.signer.scope):
                    session = None  # another tenant's session: not this token's to end
            if session is not None:
                try:
                    await self._run(self._revocations.revoke, session)
                except (OSError, ValueError) as error:
                    log.error("session_not_revoked", error=str(error))
                    return _error(503, "revocation_failed", f"the session was not revoked: {error}")
                log.info("session_revoked", session_id=session.session_id)
                self._signal_revocation()
                revoked = True
        response = _json({"auth": self._keys is not None, "revoked": revoked})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def _named_session(self, request: web.Request) -> Session | None:
        """The valid session named by a DELETE body's ``session`` (None if none)."""
        assert self._keys is not None
        body = await request.content.read(MAX_SESSION_BODY_BYTES + 1)
        try:
            value = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError:
            return None
        token = value.get("session") if isinstance(value, dict) else None
        return self._keys.check(token) if isinstance(token, str) else None

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
            threads = await self._run(self._engine_for(request).list_recent_threads, limit)
            next_after = None
        elif order == "id":
            threads = await self._run(
                self._engine_for(request).list_threads, query.get("after", ""), limit
            )
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
            after = _int(query, "after_position", None, 0, MAX_TURN)
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
        return _error(404, "not_found", "use /v1/threads/{thread_id}/events or /turns")

    async def _conversation(self, request: web.Request) -> web.StreamResponse:
        key = _unquote(request.rel_url.raw_path[len("/v1/conversations/") :], "key")
        version = _int(request.query, "version", None, 1, MAX_TURN)
        stored = await run_heavy(
            self._executor, self._engine_for(request).load_snapshot, key, version
        )
        if stored is None:
            return _error(404, "not_found", "no snapshot under this key (or version)")
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

        engine = self._engine_for(request)
        session = request[ACCESS].session
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
                while not pending.done() and self._live(session):
                    waits: tuple[asyncio.Future[Any], ...] = (pending,)
                    if session is not None:
                        waits += (self._revocation_signal(),)
                    woken, _ = await asyncio.wait(
                        waits,
                        timeout=self._wait_seconds(session),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if not woken and self._live(session):
                        await response.write(sse.HEARTBEAT)
                if not self._live(session):
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


_EVENT_STREAM_HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}


@dataclass(frozen=True)
class _Access:
    """What a request's credential grants.

    ``session`` is the session it presented (None for a bearer token or
    with auth off); ``signer`` the session signer of its bearer token (None
    unless it presented one: only a bearer token mints sessions).
    """

    scope: Scope
    session: Session | None
    signer: SessionSigner | None


@dataclass(frozen=True)
class _StreamRequest:
    query: ReplayQuery
    cursor: sse.StreamCursor
    resumed: bool
