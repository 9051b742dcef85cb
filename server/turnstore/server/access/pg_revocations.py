"""Revoked browser sessions in the shared PostgreSQL database, for a fleet.

On ``--backend postgres`` every daemon of a fleet accepts the sessions any
of them minted (they share the bearer tokens), so a revocation is kept where
they all look: the table ``turnstore_revoked_sessions`` (session id, expiry)
of the shared database. Each daemon reads the unexpired rows when its HTTP
listener starts and again every :data:`REFRESH_SECONDS` (removing expired
rows), and checks sessions against that copy in memory: a revocation made
on one daemon holds on the others within that period (plus a heartbeat for
their open streams), and across restarts of any of them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Final

import psycopg
import structlog

from turnstore.server.access.sessions import MAX_REVOKED, Session

log = structlog.get_logger("turnstore.http")

REFRESH_SECONDS: Final = 1.0
_CONNECT_TIMEOUT_SECONDS: Final = 5
_CREATE: Final = (
    "CREATE TABLE IF NOT EXISTS turnstore_revoked_sessions "
    "(session_id text PRIMARY KEY, expires_at bigint NOT NULL)"
)


class PostgresRevocations:
    """:class:`~turnstore.server.access.sessions.Revocations` kept in PostgreSQL.

    :meth:`refresh` and :meth:`revoke` block (run them off the event loop)
    and raise psycopg errors when the database cannot be reached; the
    in-memory copy then stays as it was.
    """

    refresh_seconds: Final = REFRESH_SECONDS

    def __init__(self, dsn: str, clock: Callable[[], float] = time.time) -> None:
        self._dsn = dsn
        self._clock = clock
        self._lock = threading.Lock()
        self._revoked: dict[str, int] = {}
        self._table_ready = False

    def __len__(self) -> int:
        return len(self._revoked)

    def _connect(self) -> psycopg.Connection[tuple[str, int]]:
        conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_SECONDS)
        if not self._table_ready:
            # UniqueViolation: another daemon created it at the same moment.
            with contextlib.suppress(psycopg.errors.UniqueViolation):
                conn.execute(_CREATE)
            self._table_ready = True
        return conn

    def revoked(self, session_id: str) -> bool:
        """Whether the session is revoked (the in-memory copy)."""
        return session_id in self._revoked

    def refresh(self) -> bool:
        """Read the unexpired revocations of the whole fleet; drop the expired rows.

        True when it found sessions revoked since the last read.
        """
        now = int(self._clock())
        with self._connect() as conn:
            conn.execute("DELETE FROM turnstore_revoked_sessions WHERE expires_at <= %s", (now,))
            rows = conn.execute(
                "SELECT session_id, expires_at FROM turnstore_revoked_sessions "
                "WHERE expires_at > %s LIMIT %s",
                (now, MAX_REVOKED),
            ).fetchall()
        fresh = {str(session_id): int(expiry) for session_id, expiry in rows}
        with self._lock:
            news = not fresh.keys() <= self._revoked.keys()
            self._revoked = fresh
        return news

    def revoke(self, session: Session) -> None:
        """Revoke ``session`` in the database (committed before this returns).

        Raises ValueError when :data:`MAX_REVOKED` unexpired sessions are
        already revoked.
        """
        if session.session_id in self._revoked:
            return
        if len(self._revoked) >= MAX_REVOKED:
            raise ValueError(f"{MAX_REVOKED} unexpired sessions are revoked already")
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO turnstore_revoked_sessions (session_id, expires_at) VALUES (%s, %s) "
                "ON CONFLICT (session_id) DO NOTHING",
                (session.session_id, session.expires_at),
            )
        with self._lock:
            self._revoked = {**self._revoked, session.session_id: session.expires_at}
