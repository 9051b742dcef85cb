"""The daemon's HTTP listener: event streams for browsers, JSON reads, the inspector.

Served by aiohttp on the same event loop as gRPC. Reads and JSON encoding run
on the read pool. Routes (thread ids and conversation keys percent-encoded,
matched on the raw path so ``/``, spaces and non-ASCII characters work):

- ``GET /v1/threads/{thread_id}/events``: the thread's replay as Server-Sent
  Events (:mod:`turnstore.server.api.http.event_stream`).
- ``GET /v1/threads``, ``GET /v1/threads/{thread_id}/turns``,
  ``GET /v1/conversations/{key}``: JSON reads (:mod:`turnstore.server.api.http.routes`).
- ``GET /v1/threads?prefix=|changed_since=``, ``GET /v1/conversations``,
  ``GET /v1/versions/{key}``: listings (:mod:`turnstore.server.api.http.listings`).
- ``GET|POST|DELETE /v1/session``: browser sessions, scoped
  (:mod:`turnstore.server.access.scopes`) and revocable
  (:mod:`turnstore.server.api.http.credentials`).
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
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiohttp import web

from turnstore.server.access.scoped_engine import scoped
from turnstore.server.access.scopes import Scope
from turnstore.server.api.connections import EveryInterval
from turnstore.server.api.http.common import http_error, refusal, unquote_path
from turnstore.server.api.http.credentials import ACCESS, Access, Credentials, unauthenticated
from turnstore.server.api.http.event_stream import EventStreams
from turnstore.server.api.http.listings import Listings
from turnstore.server.api.http.routes import JsonReads
from turnstore.server.replay.followers import Followers
from turnstore.server.storage.errors import DaemonError
from turnstore.server.storage.interface import StorageEngine

WEB_DIR: Final = Path(__file__).parent / "web"
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
        self._config = config
        self._credentials = Credentials(
            executor,
            auth_tokens,
            session_seconds=config.session_seconds,
            heartbeat_seconds=config.heartbeat_seconds,
            secure_cookie=tls is not None,
            revocations_path=revocations_path,
            revocations_dsn=revocations_dsn,
        )
        self._reads = JsonReads(executor, self._engine_for)
        self._listings = Listings(executor, self._engine_for, engine)
        self._streams = EventStreams(executor, followers, self._credentials, self._engine_for)
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
        app.cleanup_ctx.append(self._credentials.refreshing_revocations)
        app.on_response_prepare.append(self._headers)
        app.router.add_get("/", self._index)
        app.router.add_static("/web/", WEB_DIR, follow_symlinks=False)
        app.router.add_route("*", "/v1/session", self._credentials.session_route)
        self._listings.add_routes(app, self._reads.threads)
        app.router.add_get("/v1/threads/{rest:.+}", self._thread_route, allow_head=False)
        app.router.add_get(
            "/v1/conversations/{rest:.+}", self._reads.conversation, allow_head=False
        )
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

    # -- access --------------------------------------------------------------

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not self._allow_remote and not _loopback_host(request.host):
            return http_error(
                403, "host_not_allowed", "this daemon answers only loopback host names"
            )
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
        access = self._credentials.access(request)
        if access is not None:
            request[ACCESS] = access
        if not public and access is None:
            return unauthenticated(
                "missing or wrong credentials: send 'Authorization: Bearer <token>' or "
                "a session from POST /v1/session"
            )
        try:
            return await handler(request)
        except DaemonError as error:
            return refusal(error)

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

    def _engine_for(self, request: web.Request) -> StorageEngine:
        """The engine as the request's credential sees it (the guard set it)."""
        access: Access = request[ACCESS]
        return scoped(self._engine, access.scope)

    async def _thread_route(self, request: web.Request) -> web.StreamResponse:
        raw = request.rel_url.raw_path[len("/v1/threads/") :]
        encoded, _, action = raw.rpartition("/")
        thread_id = unquote_path(encoded, "thread_id")
        if action == "events":
            return await self._streams.serve(request, thread_id)
        if action == "turns":
            return await self._reads.turns(request, thread_id)
        return http_error(404, "not_found", "use /v1/threads/{thread_id}/events or /turns")

    async def _index(self, request: web.Request) -> web.StreamResponse:
        response = web.FileResponse(WEB_DIR / "index.html")
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
        )
        return response
