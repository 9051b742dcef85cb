"""Opening the PostgreSQL engine: its schema, its epoch mask, its connections' settings.

:func:`prepare_schema` creates the tables on a database without them (one
daemon of a fleet at a time) and leaves a schema at this version untouched;
:func:`epoch_mask` finds the database's epoch mask, drawing a new one for
tables restored into another database. Every connection runs
:data:`INDEX_COSTS`; readers are configured by :func:`configure_reader`.
"""

from __future__ import annotations

from typing import Any

import psycopg

from turnstore.server.storage.epochs import new_epoch_mask
from turnstore.server.storage.postgres import tables


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, to name the database in logs and errors."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(an unparsable DSN)"
    info.pop("password", None)
    return " ".join(f"{name}={value}" for name, value in sorted(info.items()))


def epoch_mask(conn: psycopg.Connection[Any], created: bool) -> tuple[int, bool]:
    """The epoch mask of the database, and whether it was just drawn for a restore.

    Runs in :func:`prepare_schema`'s transaction, under its lock. The
    ``database_oid`` row remembers the database the tables were created in:
    tables restored (``pg_dump`` into another database) find another oid, and
    get a new random ``epoch_mask``, so no reader's cursor from before the
    restore matches a thread's epoch. An operator who restored into the same
    database sets ``database_oid`` to 0 for the same effect
    (docs/operations.md#backup). Tables just ``created`` get a mask of their
    own, so no two databases share epochs; those of an older turnstore keep
    mask 0 and just record their oid.
    """
    current = conn.execute(
        "SELECT oid::bigint FROM pg_database WHERE datname = current_database()"
    ).fetchone()
    assert current is not None
    rows = dict(
        conn.execute(
            "SELECT name, value FROM turnstore_meta WHERE name IN ('database_oid', 'epoch_mask')"
        ).fetchall()
    )
    mask = int(rows.get("epoch_mask", 0))
    recorded = rows.get("database_oid")
    restored = recorded is not None and int(recorded) != int(current[0])
    if restored or created:
        mask = new_epoch_mask()
        conn.execute(
            "INSERT INTO turnstore_meta VALUES ('epoch_mask', %s) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            (mask,),
        )
    if recorded is None or restored or created:
        conn.execute(
            "INSERT INTO turnstore_meta VALUES ('database_oid', %s) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            (int(current[0]),),
        )
    return mask, restored


def prepare_schema(conn: psycopg.Connection[Any], dsn: str) -> bool:
    """Create the schema on a database without it; leave one at this version untouched.

    Returns whether it created the schema from nothing.

    A schema already at :data:`tables.SCHEMA_VERSION` gets no DDL at all:
    ``CREATE INDEX IF NOT EXISTS`` takes a SHARE lock on its table even when
    the index exists, so a daemon starting while others write would wait for
    their transactions and could deadlock with them (found by
    tests/test_postgres_crash.py: a restart failed with "deadlock detected").
    Raises ValueError for a newer schema, naming both versions.
    """
    # One daemon creates the schema at a time.
    conn.execute("SELECT pg_advisory_xact_lock(7239010012)")
    found = conn.execute("SELECT to_regclass('turnstore_meta') IS NOT NULL").fetchone()
    row = None
    if found is not None and found[0]:
        row = conn.execute(
            "SELECT value FROM turnstore_meta WHERE name = 'schema_version'"
        ).fetchone()
    version = None if row is None else int(row[0])
    if version is not None and version > tables.SCHEMA_VERSION:
        raise ValueError(
            f"the database ({redact_dsn(dsn)}) has turnstore schema version "
            f"{version}, newer than this turnstore ({tables.SCHEMA_VERSION})"
        )
    if version == tables.SCHEMA_VERSION:
        return False
    for statement in tables.CREATE:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO turnstore_meta VALUES ('schema_version', %s) "
        "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
        (tables.SCHEMA_VERSION,),
    )
    return version is None


# turnstore's statements are index lookups on hot data. At PostgreSQL's
# untuned default random_page_cost (4, a spinning disk's), a table of some
# tens of thousands of rows made the planner scan the whole events table for
# an append of 200 events instead of probing its unique index 200 times: 10
# ms a statement, a quarter of the write rate. A value the DBA set stays.
INDEX_COSTS = (
    "SELECT set_config('random_page_cost', '1.1', false) "
    "WHERE current_setting('random_page_cost')::float8 = 4"
)


def configure_reader(conn: psycopg.Connection[Any]) -> None:
    """Make a pool connection a reader: read-only REPEATABLE READ (one snapshot per read)."""
    conn.commit()  # the connection's own setup ran in a transaction
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    conn.execute(INDEX_COSTS)
    conn.commit()
