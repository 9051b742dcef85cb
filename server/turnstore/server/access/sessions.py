"""Short-lived, scoped browser sessions signed with a key derived from a bearer token.

A browser's ``EventSource`` cannot send an ``Authorization`` header, so a page
(or the chat backend that serves it) trades a bearer token for a session
token at ``POST /v1/session`` and presents that instead, as an HttpOnly
``SameSite=Strict`` cookie or a ``session`` query parameter.

A session token is ``v2.<key id>.<expiry unix seconds>.<nonce>.<scope>.<HMAC-SHA256
signature>``. The key is derived from the bearer token that minted it and
that token's scope, and ``<key id>`` names it, so several tokens can mint
sessions and changing (or narrowing) a token voids the sessions it signed.
``<scope>`` is ``-`` for the minting token's own scope, else the session's
scope (:mod:`turnstore.server.access.scopes`) as base64url JSON; it is signed, so
a holder cannot widen it. A token stops working at its expiry, or when it
is revoked (:class:`Revocations`, kept in a file that survives restarts).
Tokens are at most :data:`MAX_TOKEN_CHARS` characters (a cookie must fit
in 4 KiB): a scope too large for that is refused when minting.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson

from turnstore.server.access.scopes import FULL, Scope, ScopeError, ScopeTooWideError, parse_scope

VERSION: Final = "v2"
_KEY_LABEL: Final = b"turnstore http session v2\0"
# Cookies are limited to about 4 KiB with their name and attributes.
MAX_TOKEN_CHARS: Final = 3800
_OWN_SCOPE: Final = "-"
# Revoked sessions remembered at once (each lives until its expiry).
MAX_REVOKED: Final = 100_000
REVOCATIONS_FILE: Final = "http-revoked-sessions.json"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _canonical(scope: Scope) -> bytes:
    return orjson.dumps(scope.to_json(), option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class Session:
    """A checked session token: its id (for revocation), expiry and scope."""

    session_id: str
    expires_at: int
    scope: Scope


class SessionSigner:
    """Issues and checks the session tokens of one bearer token, valid for ``ttl_seconds``.

    ``scope`` is the bearer token's own scope: sessions it issues never
    exceed it. ``clock`` returns Unix seconds (tests pass their own). A
    malformed, forged or expired token is simply not valid (no exception).
    """

    def __init__(
        self,
        bearer_token: str,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
        scope: Scope = FULL,
    ) -> None:
        if not bearer_token:
            raise ValueError("the bearer token must not be empty")
        if ttl_seconds <= 0:
            raise ValueError("the session lifetime must be positive")
        self._key = hmac.new(
            bearer_token.encode(), _KEY_LABEL + _canonical(scope), hashlib.sha256
        ).digest()
        self.key_id = _b64(hashlib.sha256(b"key id\0" + self._key).digest()[:6])
        self._bearer = f"Bearer {bearer_token}".encode()
        self.scope = scope
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    def bearer_ok(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries the bearer token (constant time)."""
        return hmac.compare_digest((authorization or "").encode(), self._bearer)

    def issue(self, scope: Scope | None = None) -> tuple[str, int]:
        """A new session token for ``scope`` (default: the token's own) and its expiry.

        Raises ScopeTooWideError when ``scope`` exceeds the token's scope,
        ScopeError when it is too large to fit in a token.
        """
        if scope is None or scope == self.scope:
            encoded = _OWN_SCOPE
        elif not scope.within(self.scope):
            raise ScopeTooWideError(
                "scope: exceeds the scope of the bearer token that mints the session"
            )
        else:
            encoded = _b64(_canonical(scope))
        expiry = int(self._clock() + self.ttl_seconds)
        nonce = _b64(secrets.token_bytes(12))
        payload = f"{VERSION}.{self.key_id}.{expiry}.{nonce}.{encoded}"
        token = f"{payload}.{self._sign(payload)}"
        if len(token) > MAX_TOKEN_CHARS:
            raise ScopeError(
                f"scope: too large for a session token of at most {MAX_TOKEN_CHARS} characters; "
                "use a prefix or list fewer ids"
            )
        return token, expiry

    def check(self, token: str | None) -> Session | None:
        """The session of ``token`` if this key issued it and it has not expired, else None."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        payload, _, signature = token.rpartition(".")
        parts = payload.split(".")
        if (
            len(parts) != 5
            or parts[0] != VERSION
            or parts[1] != self.key_id
            or not (parts[2].isascii() and parts[2].isdigit())
        ):
            return None
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None
        expiry = int(parts[2])
        if expiry <= self._clock():
            return None
        scope = self.scope
        if parts[4] != _OWN_SCOPE:
            try:
                scope = parse_scope(orjson.loads(_unb64(parts[4])))
            except (ValueError, binascii.Error):  # signed by us: never, but not a crash
                return None
        return Session(f"{parts[1]}.{parts[3]}", expiry, scope)

    def valid(self, token: str | None) -> bool:
        """Whether ``token`` was issued under this key and has not expired (revocation aside)."""
        return self.check(token) is not None

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())


class SessionKeys:
    """The session signers of every configured bearer token, found by key id."""

    def __init__(self, signers: Iterable[SessionSigner]) -> None:
        self.signers = list(signers)
        self._by_key_id = {signer.key_id: signer for signer in self.signers}

    def bearer(self, authorization: str | None) -> SessionSigner | None:
        """The signer of the bearer token an ``Authorization`` value carries, if any.

        Compares against every token (constant time each, no early exit).
        """
        found = None
        for signer in self.signers:
            if signer.bearer_ok(authorization):
                found = signer
        return found

    def check(self, token: str | None) -> Session | None:
        """The session of ``token`` (revocation aside), or None."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        parts = token.split(".", 2)
        signer = self._by_key_id.get(parts[1]) if len(parts) == 3 else None
        return signer.check(token) if signer is not None else None


class Revocations:
    """Revoked session ids until their expiry, kept in a JSON file that survives restarts.

    The file (``{"revoked": {session id: expiry}}``) is replaced whole on
    every revocation: written to a temporary file in the same directory,
    fsynced, renamed over the old one, and the directory fsynced, so a crash
    leaves the old or the new list, never a torn one. Expired entries are
    dropped when the file is read and written, and temporary files a crash
    left behind when it is read (ValueError if it is not such a list).
    ``path`` None keeps them in memory only.
    :meth:`revoke` blocks (run it off the event loop).
    """

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._revoked: dict[str, int] = {}
        if path is not None and path.parent.is_dir():
            # Temporary files of writes a crash interrupted (the list itself is whole).
            for leftover in path.parent.glob(f".{path.name}.*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        if path is not None and path.exists():
            now = clock()
            try:
                loaded = orjson.loads(path.read_bytes())["revoked"]
                self._revoked = {
                    str(session_id): int(expiry)
                    for session_id, expiry in loaded.items()
                    if int(expiry) > now
                }
            except (ValueError, TypeError, KeyError, AttributeError) as error:
                raise ValueError(
                    f"{str(path)!r} is not a list of revoked sessions: {error}"
                ) from None

    def __len__(self) -> int:
        return len(self._revoked)

    def revoked(self, session_id: str) -> bool:
        """Whether the session is revoked (an in-memory lookup)."""
        return session_id in self._revoked

    def revoke(self, session: Session) -> None:
        """Revoke ``session`` durably; OSError if the file cannot be written.

        Raises ValueError when :data:`MAX_REVOKED` unexpired sessions are
        already revoked.
        """
        with self._lock:
            if session.session_id in self._revoked:
                return
            now = self._clock()
            kept = {sid: expiry for sid, expiry in self._revoked.items() if expiry > now}
            if len(kept) >= MAX_REVOKED:
                raise ValueError(f"{MAX_REVOKED} unexpired sessions are revoked already")
            kept[session.session_id] = session.expires_at
            if self._path is not None:
                self._write(kept)
            self._revoked = kept

    def _write(self, revoked: dict[str, int]) -> None:
        assert self._path is not None
        directory = self._path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{self._path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(orjson.dumps({"revoked": revoked}))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
