"""The PostgreSQL layout: every table turnstore uses, in one place.

Thread ids and conversation keys are stored as ``bytea`` (their UTF-8 form)
so that listings come in byte order, as on LMDB. Turn numbers are unsigned
64-bit on the wire; they are stored as ``turn - 2**63`` in a ``bigint`` so
that the column's order is the turns' order (:func:`to_column`).

``turnstore_meta``
    name text -> value bigint. ``schema_version``: the layout version below.
    ``epoch_mask``: XORed into thread numbers to make the epochs readers see
    (absent: 0). ``database_oid``: the database the tables were created in;
    another one at start means they were restored (new ``epoch_mask``).

``turnstore_threads``
    thread_id bytea (primary key) | number bigint | next_position bigint |
    next_finish_seq bigint | last_write_ns bigint.
    The per-thread counter row: every write of a thread locks it
    (``SELECT ... FOR UPDATE``) in its transaction, so positions are given
    0-based and gap-free in commit order (never from a sequence, which has
    gaps). ``number`` is the thread's epoch: a cleared thread's row is
    deleted, and its next write gets a new number from
    ``turnstore_thread_numbers``, so reads bounded by an old view see the
    change.

``turnstore_turns``
    (number, turn) primary key | finished bool | event_count bigint |
    last_position bigint.

``turnstore_events``
    (number, position) primary key | turn bigint | event_id bytea | record bytea.
    ``record`` is the wire record of :mod:`turnstore.server.storage.records`, so
    reads join stored bytes. A unique index on (number, event_id) makes
    appends idempotent, and one on (number, turn, position) serves
    turn-ordered reads.

``turnstore_finishes``
    (number, seq) primary key | turn bigint | frontier bigint |
    event_count bigint | last_position bigint: the thread's turn finishes in
    commit order (see the LMDB ``turn_finishes``).

``turnstore_conversations``
    key bytea (primary key) | number bigint | latest_version bigint |
    current_version bigint | last_write_ns bigint (see the LMDB
    ``conversations``).

    A partial index on ``key`` of the rows whose ``current_version`` is not
    0 (``turnstore_conversations_live``) serves listings: deleted keys,
    which keep their rows for their version counters, are not in it, and a
    listing's range (both directions) is one index range scan. Created by
    ``CREATE INDEX IF NOT EXISTS`` when the daemon starts, so older
    databases gain it with no schema version change.

``turnstore_snapshots``
    (number, version) primary key | saved_at_ns bigint | content_type text | data bytea.
"""

from __future__ import annotations

from typing import Final

SCHEMA_VERSION: Final = 1
# Every commit that changed threads notifies this channel with their ids.
CHANNEL: Final = "turnstore_commits"

_TURN_SHIFT: Final = 1 << 63

CREATE: Final = (
    "CREATE TABLE IF NOT EXISTS turnstore_meta (name text PRIMARY KEY, value bigint NOT NULL)",
    "CREATE SEQUENCE IF NOT EXISTS turnstore_thread_numbers",
    "CREATE SEQUENCE IF NOT EXISTS turnstore_conversation_numbers",
    """CREATE TABLE IF NOT EXISTS turnstore_threads (
        thread_id bytea PRIMARY KEY, number bigint NOT NULL, next_position bigint NOT NULL,
        next_finish_seq bigint NOT NULL, last_write_ns bigint NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS turnstore_threads_last_write ON turnstore_threads (last_write_ns)",
    """CREATE TABLE IF NOT EXISTS turnstore_turns (
        number bigint NOT NULL, turn bigint NOT NULL, finished boolean NOT NULL,
        event_count bigint NOT NULL, last_position bigint NOT NULL,
        PRIMARY KEY (number, turn))""",
    """CREATE TABLE IF NOT EXISTS turnstore_events (
        number bigint NOT NULL, position bigint NOT NULL, turn bigint NOT NULL,
        event_id bytea NOT NULL, record bytea NOT NULL, PRIMARY KEY (number, position))""",
    "CREATE UNIQUE INDEX IF NOT EXISTS turnstore_events_ids ON turnstore_events (number, event_id)",
    "CREATE INDEX IF NOT EXISTS turnstore_events_turns "
    "ON turnstore_events (number, turn, position)",
    """CREATE TABLE IF NOT EXISTS turnstore_finishes (
        number bigint NOT NULL, seq bigint NOT NULL, turn bigint NOT NULL,
        frontier bigint NOT NULL, event_count bigint NOT NULL, last_position bigint NOT NULL,
        PRIMARY KEY (number, seq))""",
    """CREATE TABLE IF NOT EXISTS turnstore_conversations (
        key bytea PRIMARY KEY, number bigint NOT NULL, latest_version bigint NOT NULL,
        current_version bigint NOT NULL, last_write_ns bigint NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS turnstore_conversations_last_write "
    "ON turnstore_conversations (last_write_ns)",
    "CREATE INDEX IF NOT EXISTS turnstore_conversations_live "
    "ON turnstore_conversations (key) WHERE current_version <> 0",
    """CREATE TABLE IF NOT EXISTS turnstore_snapshots (
        number bigint NOT NULL, version bigint NOT NULL, saved_at_ns bigint NOT NULL,
        content_type text NOT NULL, data bytea NOT NULL, PRIMARY KEY (number, version))""",
)

# The tables a thread's number keys, deleted together by a clear.
THREAD_TABLES: Final = ("turnstore_events", "turnstore_turns", "turnstore_finishes")


def to_column(turn: int) -> int:
    """A turn number (0 .. 2**64-1) as stored, order-preserving in a signed bigint."""
    return turn - _TURN_SHIFT


def from_column(value: int) -> int:
    """A stored turn column back to the turn number."""
    return value + _TURN_SHIFT
