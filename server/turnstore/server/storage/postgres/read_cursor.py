"""A cursor in one read-only snapshot of the database, for the engine's reads.

Kept apart from :mod:`.engine` because of what it does when the database
is believed down (:mod:`.reachability`): a read waits only briefly for the
pool, then tries one connection of its own, since the pool backs off
between reconnection attempts after an outage and the database may be back
before the pool tries again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import psycopg_pool

from turnstore.server.storage.errors import DatabaseUnavailableError
from turnstore.server.storage.postgres import opening
from turnstore.server.storage.postgres.reachability import DOWN_WAIT_SECONDS, Reachability
from turnstore.server.storage.postgres.writer import _describe
from turnstore.server.storage.postgres.writes import Cursor


@contextlib.contextmanager
def read_cursor(
    pool: psycopg_pool.ConnectionPool,
    connect: Callable[[], psycopg.Connection[Any]],
    connect_timeout_seconds: float,
    reachability: Reachability,
) -> Iterator[Cursor]:
    """A cursor in one read-only REPEATABLE READ transaction (the pool's connections
    are configured so); DatabaseUnavailableError when the database is unreachable."""
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
            stack.enter_context(conn.transaction())
            yield stack.enter_context(conn.cursor())
    except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as error:
        reachability.mark_down()
        raise DatabaseUnavailableError(
            f"the database is unreachable ({_describe(error)})"
        ) from None
    reachability.mark_up()
