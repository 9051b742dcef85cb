"""What each HTTP request's credential grants, and the session routes (``/v1/session``).

With bearer tokens configured, a request presents a token
(``Authorization: Bearer``), or a session minted from one (the session
cookie or ``session=``): :meth:`Credentials.access` tells what it grants.
Sessions are scoped (:mod:`turnstore.server.access.scopes`) and revocable;
revocations are kept in a file, in memory, or in a fleet's PostgreSQL
database (:mod:`turnstore.server.access.pg_revocations`), re-read every few
seconds while serving. Open streams of sessions learn of a revocation at
once through :meth:`Credentials.revocation_signal`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
import structlog
from aiohttp import web

from turnstore.server.access.errors import PermissionDeniedError, UnauthenticatedError
from turnstore.server.access.scopes import FULL, Scope, ScopeError, ScopeTooWideError, parse_scope
from turnstore.server.access.sessions import Revocations, Session, SessionKeys, SessionSigner
from turnstore.server.api.http.common import http_error, json_response, reason_error
from turnstore.server.storage.errors import InvalidArgumentError

if TYPE_CHECKING:
    from turnstore.server.access.pg_revocations import PostgresRevocations

log = structlog.get_logger("turnstore.http")

SESSION_COOKIE: Final = "turnstore_session"
# The request key under which the guard keeps the request's Access.
ACCESS: Final = "turnstore_access"
# Bytes of a POST /v1/session body (more could not fit in a session token).
MAX_SESSION_BODY_BYTES: Final = 64 << 10


@dataclass(frozen=True)
class Access:
    """What a request's credential grants.

    ``session`` is the session it presented (None for a bearer token or
    with auth off); ``signer`` the session signer of its bearer token (None
    unless it presented one: only a bearer token mints sessions).
    """

    scope: Scope
    session: Session | None
    signer: SessionSigner | None


def unauthenticated(message: str) -> web.Response:
    """The 401 answer of a request without a valid credential, with its ``WWW-Authenticate``."""
    response = reason_error(UnauthenticatedError.reason, message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="turnstore"'
    return response


class Credentials:
    """The daemon's HTTP credentials: its bearer tokens, the sessions they mint, revocations.

    No ``auth_tokens`` grants every request everything. Revoked sessions are
    kept in ``revocations_path`` (in memory only when None), or with
    ``revocations_dsn`` in that PostgreSQL database, shared by a fleet.
    ``secure_cookie`` marks the session cookie for HTTPS only.
    """

    def __init__(
        self,
        executor: Executor,
        auth_tokens: Sequence[tuple[str, Scope]],
        *,
        session_seconds: float,
        heartbeat_seconds: float,
        secure_cookie: bool,
        revocations_path: Path | None = None,
        revocations_dsn: str | None = None,
    ) -> None:
        self._executor = executor
        self._heartbeat_seconds = heartbeat_seconds
        self._secure_cookie = secure_cookie
        self._keys = (
            SessionKeys(
                SessionSigner(token, session_seconds, scope=scope) for token, scope in auth_tokens
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

    async def refreshing_revocations(self, app: web.Application) -> AsyncIterator[None]:
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

    def access(self, request: web.Request) -> Access | None:
        """What the request's credential grants: bearer header, cookie or ``session=``.

        None when it presents none that is valid (a revoked or expired
        session is none). With auth off, everything.
        """
        if self._keys is None or self._revocations is None:
            return Access(FULL, None, None)
        signer = self._keys.bearer(request.headers.get("Authorization"))
        if signer is not None:
            return Access(signer.scope, None, signer)
        for token in (request.cookies.get(SESSION_COOKIE), request.query.get("session")):
            session = self._keys.check(token)
            if session is not None and not self._revocations.revoked(session.session_id):
                return Access(session.scope, session, None)
        return None

    def live(self, session: Session | None) -> bool:
        """Whether a stream opened with ``session`` may go on (not expired, not revoked)."""
        if session is None or self._revocations is None:
            return True
        return session.expires_at > time.time() and not self._revocations.revoked(
            session.session_id
        )

    def revocation_signal(self) -> asyncio.Future[None]:
        """A future resolved at the next revocation this daemon learns of."""
        if self._revoked_now is None or self._revoked_now.done():
            self._revoked_now = asyncio.get_running_loop().create_future()
        return self._revoked_now

    def _signal_revocation(self) -> None:
        if self._revoked_now is not None and not self._revoked_now.done():
            self._revoked_now.set_result(None)

    def wait_seconds(self, session: Session | None) -> float:
        """How long a stream waits for the next batch before its next heartbeat or check.

        A heartbeat, or less when the session expires sooner, so that the
        stream ends right at the expiry (and within a heartbeat of a revocation).
        """
        heartbeat = self._heartbeat_seconds
        if session is None:
            return heartbeat
        return max(0.01, min(heartbeat, session.expires_at - time.time()))

    async def session_route(self, request: web.Request) -> web.StreamResponse:
        """GET: whether auth is on and this request passes; POST: a session; DELETE: revoke."""
        access: Access | None = request.get(ACCESS)
        auth = self._keys is not None
        if request.method == "GET":
            state: dict[str, Any] = {"auth": auth, "authenticated": access is not None}
            if access is not None and auth:
                state["scope"] = access.scope.to_json()
                state["expires_at"] = access.session.expires_at if access.session else None
            return json_response(state)
        if request.method == "DELETE":
            return await self._revoke(request, access)
        if request.method != "POST":
            return http_error(405, "method_not_allowed", "use GET, POST or DELETE")
        if self._keys is None:
            return json_response({"auth": False, "session": None, "expires_at": None})
        if access is None or access.signer is None:
            return unauthenticated("POST /v1/session needs a bearer token")
        try:
            asked = await self._requested_scope(request)
            token, expiry = access.signer.issue(asked)
        except ScopeTooWideError as error:
            return reason_error(PermissionDeniedError.reason, str(error))
        except ScopeError as error:
            return reason_error(InvalidArgumentError.reason, str(error))
        scope = asked if asked is not None else access.signer.scope
        response = json_response(
            {"auth": True, "session": token, "expires_at": expiry, "scope": scope.to_json()}
        )
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=int(access.signer.ttl_seconds),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self._secure_cookie,
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

    async def _revoke(self, request: web.Request, access: Access | None) -> web.StreamResponse:
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
                    return http_error(
                        503, "revocation_failed", f"the session was not revoked: {error}"
                    )
                log.info("session_revoked", session_id=session.session_id)
                self._signal_revocation()
                revoked = True
        response = json_response({"auth": self._keys is not None, "revoked": revoked})
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
