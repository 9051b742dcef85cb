"""Short-lived browser sessions signed with a key derived from the bearer token.

A browser's ``EventSource`` cannot send an ``Authorization`` header, so a page
(or the chat backend that serves it) trades the bearer token for a session
token at ``POST /v1/session`` and presents that instead, as an HttpOnly
``SameSite=Strict`` cookie or a ``session`` query parameter. A session token is
``v1.<expiry unix seconds>.<nonce>.<HMAC-SHA256 signature>``: the daemon keeps
no session state, a token stops working at its expiry, and changing the bearer
token invalidates every session signed under the old one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Final

VERSION: Final = "v1"
_KEY_LABEL: Final = b"turnstore http session v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SessionSigner:
    """Issues and checks session tokens valid for ``ttl_seconds``.

    ``clock`` returns Unix seconds (tests pass their own). A token is valid
    while its expiry is in the future; a malformed, forged or expired token
    is simply not valid (no exception).
    """

    def __init__(
        self, bearer_token: str, ttl_seconds: float, clock: Callable[[], float] = time.time
    ) -> None:
        if not bearer_token:
            raise ValueError("the bearer token must not be empty")
        if ttl_seconds <= 0:
            raise ValueError("the session lifetime must be positive")
        self._key = hmac.new(bearer_token.encode(), _KEY_LABEL, hashlib.sha256).digest()
        self._bearer = f"Bearer {bearer_token}".encode()
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    def bearer_ok(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value carries the bearer token (constant time)."""
        return hmac.compare_digest((authorization or "").encode(), self._bearer)

    def issue(self) -> tuple[str, int]:
        """A new session token and its expiry (Unix seconds)."""
        expiry = int(self._clock() + self.ttl_seconds)
        payload = f"{VERSION}.{expiry}.{_b64(secrets.token_bytes(9))}"
        return f"{payload}.{self._sign(payload)}", expiry

    def valid(self, token: str | None) -> bool:
        """Whether ``token`` was issued under this key and has not expired."""
        if not token or len(token) > 200:
            return False
        payload, _, signature = token.rpartition(".")
        parts = payload.split(".")
        if (
            len(parts) != 3
            or parts[0] != VERSION
            or not (parts[1].isascii() and parts[1].isdigit())
        ):
            return False
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return False
        return int(parts[1]) > self._clock()

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())
