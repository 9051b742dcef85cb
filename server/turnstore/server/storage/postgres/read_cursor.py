"""A cursor in one read-only snapshot of the database, for the engine's reads.

Kept apart from :mod:`.engine` because of what it does when the database
is believed down (:mod:`.reachability`): a read waits only briefly for the
pool, then tries one connection of its own, since the pool backs off
between reconnection attempts after an outage and the database may be back
before the pool tries again.

A read of one statement (``single_statement``) runs outside a transaction:
the statement sees one snapshot by itself, and BEGIN and COMMIT would be
two more round trips. :func:`check_idle` is the pool's check of a connection
it hands out, without a round trip while the connection is quiet.
"""

from __future__ import annotations

import contextlib
import select
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import psycopg_pool

from turnstore.server.storage.errors import DatabaseUnavailableError
from turnstore.server.storage.postgres import opening
from turnstore.server.storage.postgres.reachability import DOWN_WAIT_SECONDS, Reachability
from turnstore.server.storage.postgres.writer import _describe
from turnstore.server.storage.postgres.writes import Cursor


def check_idle(conn: psycopg.Connection[Any]) -> None:
    """The pool's check of a connection before handing it out: raise if it is gone.

    An idle reader connection receives nothing (it does not LISTEN), so a
    socket with something to read holds the server's goodbye (the FATAL of
    a restart or a terminated backend, or the end of the stream): only then
    is the round trip of :meth:`psycopg_pool.ConnectionPool.check_connection`
    spent, which raises for a connection that is gone and reads anything
    else. A connection whose network went silent passes, as it would pass
    no check until a timeout: its read fails with DatabaseUnavailableError.
    """
    if conn.closed or select.select([conn.fileno()], [], [], 0)[0]:
        psycopg_pool.ConnectionPool.check_connection(conn)


@contextlib.contextmanager
def read_cursor(
    pool: psycopg_pool.ConnectionPool,
    connect: Callable[[], psycopg.Connection[Any]],
    connect_timeout_seconds: float,
    reachability: Reachability,
    single_statement: bool = False,
) -> Iterator[Cursor]:
    """A cursor in one read-only REPEATABLE READ transaction (the pool's connections
    are configured so); DatabaseUnavailableError when the database is unreachable.

    With ``single_statement`` the cursor runs in autocommit instead (no
    BEGIN, no COMMIT): for a read of exactly one statement, which sees one
    snapshot by itself. The connection goes back to the pool as it came.
    """
    down = reachability.down
    wait = DOWN_WAIT_SECONDS if down else connect_timeout_seconds
    try:
        with contextlib.ExitStack() as stack:
            try:
                conn = stack.enter_context(pool.connection(timeout=wait))
            except psycopg_pool.PoolTimeout:
                if not down:
                    raise
                conn = stack.enter_context(connect())
                opening.configure_reader(conn)
            if single_statement:
                conn.autocommit = True
                stack.callback(_end_autocommit, conn)
            else:
                stack.enter_context(conn.transaction())
            yield stack.enter_context(conn.cursor())
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as error:
        reachability.mark_down()
        raise DatabaseUnavailableError(
            f"the database is unreachable ({_describe(error)})"
        ) from None
    reachability.mark_up()


def _end_autocommit(conn: psycopg.Connection[Any]) -> None:
    """Put a reader connection back in transaction mode (local: no round trip).

    A connection that broke stays as it is: the pool discards it.
    """
    if not conn.broken:
        with contextlib.suppress(psycopg.Error):
            conn.autocommit = False
