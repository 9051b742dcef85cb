"""The on-disk layout: every LMDB named database turnstore uses, in one place.

All integers are unsigned 64-bit big-endian (so byte order is numeric order)
unless stated otherwise. A *thread number* is a small integer given to a thread
id when the thread is first written; keys use it instead of the (up to 511
byte) thread id, and a cleared thread gets a new number on its next write, so
nothing of its old life can be read back by mistake.

``meta``
    key: ASCII name -> value: u64.
    ``schema_version``: the layout version below (currently 3; a version 1
    or 2 directory is brought to 3 when opened: :func:`migrate`).
    ``next_thread_number``: the number the next new thread gets.
    ``next_conversation_number``: likewise for conversation keys.
    ``epoch_mask``: XORed into thread numbers to make the epochs readers see
    (absent: 0, in databases older than it), drawn when the database is
    created, so no two databases share epochs. ``restored_backup``: present
    only in a ``turnstore backup`` copy; the first daemon to open the copy
    draws a new ``epoch_mask`` and deletes it, so no cursor from before a
    restore matches a thread's epoch.

``threads``
    key: thread id (UTF-8)
    -> value: thread_number u64 | next_position u64 | next_finish_seq u64 |
    last_write_unix_nanos u64.
    ``next_position`` is also the thread's event count, as positions are
    gap-free from 0; ``next_finish_seq`` counts the thread's finished turns.
    ``last_write_unix_nanos`` is the commit time of the thread's last append
    or finish (an append that stored nothing new, a retry, leaves it); the
    retention sweep removes threads by it. Decoded by :func:`unpack_thread`.

``threads_by_write``
    key: last_write_unix_nanos u64 | thread id (UTF-8) -> value: empty.
    One entry per ``threads`` entry, with its ``last_write_unix_nanos``:
    the index a recent-first listing walks backwards, reading only the
    entries it returns. The writer replaces a thread's entry in the
    transaction that changes its last write, and deletes it with the thread.
    Added in schema version 2.

``turns``
    key: thread_number u64 | turn u64
    -> value: finished u8 | event_count u64 | last_position u64 | record_bytes u64.
    ``last_position`` is meaningless while ``event_count`` is 0.
    ``record_bytes`` is the total length of the turn's ``events`` values, so
    a whole-turn read can be refused by size without touching them. Turns
    begun before schema version 2 have no ``record_bytes`` (a 17-byte value)
    and keep none; their size is measured from the events when needed.

``events``
    key: thread_number u64 | position u64 -> value: a ``StoredEvent`` message
    of ``proto/turnstore/v1/turnstore.proto`` framed as field 1 of the stream
    responses (tag, length, message), built by :mod:`turnstore.server.storage.records`.
    Storing the wire form lets reads answer with the stored bytes joined,
    without decoding and re-encoding any event.

``turn_finishes``
    key: thread_number u64 | finish_seq u64
    -> value: turn u64 | frontier u64 | event_count u64 | last_position u64.
    The thread's turn finishes in the order they were committed. ``frontier``
    is the thread's event count when the turn was finished: the finish comes
    after every event below it and before every event at or above it, which
    is how replays place finish markers among events and resume after a
    position.

``turn_events``
    key: thread_number u64 | turn u64 | position u64 -> value: empty.
    The index of each turn's events in append order.

``event_ids``
    key: thread_number u64 | event_id (UTF-8) -> value: position u64 | turn u64.
    Makes appends idempotent: an event id is stored once per thread.

``conversations``
    key: the *record key* of a conversation key (:func:`record_key`): the key's
    UTF-8 itself when it is at most 511 bytes (LMDB's key limit), else its
    first 478 bytes, 0xff (never in UTF-8, so no short key looks like it)
    and the SHA-256 of the whole key (keys up to 1000 bytes, schema version 3)
    -> value: conversation_number u64 | latest_version u64 | current_version u64 |
    last_write_unix_nanos u64, then, for a key over 511 bytes, the whole key
    (UTF-8), which :func:`full_key` reads back.
    ``latest_version`` is the last version ever given (versions never
    restart, not even after a delete, as long as the key is not removed by
    retention);
    ``current_version`` is the version a load returns, 0 once the key is
    deleted. ``last_write_unix_nanos`` is the commit time of the key's last
    save or delete; the retention sweep removes keys by it. Decoded by
    :func:`unpack_conversation`.

``live_conversations`` (sorted duplicates, LMDB's DUPSORT)
    key: the first 511 bytes of a conversation key (UTF-8)
    -> values: 0x00 and the rest of the key, one value per key
    (:func:`live_entry`; a key of at most 511 bytes has the value 0x00 alone:
    LMDB refuses empty values here). The (key, value) order is the order of
    the whole keys, so listings walk it as one sorted sequence of keys.
    One entry per ``conversations`` entry whose ``current_version`` is not 0:
    the keys that hold a snapshot. Listings walk it (forwards or backwards
    from a bound), so deleted keys, which stay in ``conversations`` for their
    version counters, cost a listing nothing, and the last key under a prefix
    is one seek. The writer adds a key's entry in the transaction that saves
    it and removes it in the one that deletes it (or retention removes the
    key). Added in schema version 3.

``snapshots``
    key: conversation_number u64 | version u64
    -> value: saved_at_unix_nanos i64 | content_type_length u16 |
    content_type (UTF-8) | data.

``snapshot_versions``
    key: conversation_number u64 | version u64
    -> value: saved_at_unix_nanos i64 | data_bytes u64 | content_type (UTF-8).
    The metadata of each ``snapshots`` entry, written and deleted with it,
    so that listing versions reads no snapshot data (reading a value maps
    all its pages). Versions saved before schema version 2 have none; a
    listing reads their ``snapshots`` header instead. Added in version 2.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any, Final, NamedTuple

from turnstore.server.storage.config import MAX_CONVERSATION_KEY_BYTES

SCHEMA_VERSION: Final = 3

META: Final = b"meta"
THREADS: Final = b"threads"
THREADS_BY_WRITE: Final = b"threads_by_write"
TURNS: Final = b"turns"
EVENTS: Final = b"events"
TURN_EVENTS: Final = b"turn_events"
TURN_FINISHES: Final = b"turn_finishes"
EVENT_IDS: Final = b"event_ids"
CONVERSATIONS: Final = b"conversations"
LIVE_CONVERSATIONS: Final = b"live_conversations"
SNAPSHOTS: Final = b"snapshots"
SNAPSHOT_VERSIONS: Final = b"snapshot_versions"

ALL_DATABASES: Final = (
    META,
    THREADS,
    THREADS_BY_WRITE,
    TURNS,
    EVENTS,
    TURN_EVENTS,
    TURN_FINISHES,
    EVENT_IDS,
    CONVERSATIONS,
    SNAPSHOTS,
    SNAPSHOT_VERSIONS,
    LIVE_CONVERSATIONS,
)

META_SCHEMA_VERSION: Final = b"schema_version"
META_NEXT_THREAD_NUMBER: Final = b"next_thread_number"
META_NEXT_CONVERSATION_NUMBER: Final = b"next_conversation_number"
META_EPOCH_MASK: Final = b"epoch_mask"
META_RESTORED_BACKUP: Final = b"restored_backup"

U64: Final = struct.Struct(">Q")
PAIR: Final = struct.Struct(">QQ")
TRIPLE: Final = struct.Struct(">QQQ")
QUAD: Final = struct.Struct(">QQQQ")
TURN_VALUE: Final = struct.Struct(">BQQ")
SIZED_TURN_VALUE: Final = struct.Struct(">BQQQ")
SNAPSHOT_VERSION_HEADER: Final = struct.Struct(">qQ")
THREAD_VALUE: Final = QUAD
CONVERSATION_VALUE: Final = QUAD
SNAPSHOT_HEADER: Final = struct.Struct(">qH")


def pack_turn(
    finished: bool, event_count: int, last_position: int, record_bytes: int | None
) -> bytes:
    """Encode a ``turns`` value (``record_bytes`` None: a turn begun before version 2)."""
    flag = 1 if finished else 0
    if record_bytes is None:
        return TURN_VALUE.pack(flag, event_count, last_position)
    return SIZED_TURN_VALUE.pack(flag, event_count, last_position, record_bytes)


def unpack_turn(value: bytes) -> tuple[bool, int, int]:
    """Decode a ``turns`` value into (finished, event_count, last_position)."""
    finished, count, last = TURN_VALUE.unpack_from(value)
    return bool(finished), count, last


def turn_record_bytes(value: bytes) -> int | None:
    """A ``turns`` value's ``record_bytes``; None for a turn begun before version 2."""
    if len(value) < SIZED_TURN_VALUE.size:
        return None
    return int(SIZED_TURN_VALUE.unpack(value)[3])


def pack_snapshot_version(saved_at_ns: int, data_bytes: int, content_type: bytes) -> bytes:
    """Encode a ``snapshot_versions`` value."""
    return SNAPSHOT_VERSION_HEADER.pack(saved_at_ns, data_bytes) + content_type


def unpack_snapshot_version(value: bytes) -> tuple[int, int, str]:
    """Decode a ``snapshot_versions`` value into (saved_at_ns, data_bytes, content_type)."""
    saved_at, size = SNAPSHOT_VERSION_HEADER.unpack_from(value)
    return saved_at, size, value[SNAPSHOT_VERSION_HEADER.size :].decode("utf-8")


class ThreadRecord(NamedTuple):
    """A decoded ``threads`` value."""

    number: int
    next_position: int
    next_finish_seq: int
    last_write_ns: int


def pack_thread(number: int, next_position: int, next_finish_seq: int, last_write_ns: int) -> bytes:
    """Encode a ``threads`` value."""
    return THREAD_VALUE.pack(number, next_position, next_finish_seq, last_write_ns)


def unpack_thread(value: bytes) -> ThreadRecord:
    """Decode a ``threads`` value."""
    return ThreadRecord(*THREAD_VALUE.unpack(value))


class ConversationRecord(NamedTuple):
    """A decoded ``conversations`` value."""

    number: int
    latest_version: int
    current_version: int
    last_write_ns: int


def pack_conversation(
    number: int, latest: int, current: int, last_write_ns: int, key: bytes
) -> bytes:
    """Encode a ``conversations`` value (with the whole ``key`` when it is over 511 bytes)."""
    packed = CONVERSATION_VALUE.pack(number, latest, current, last_write_ns)
    return packed + key if len(key) > MAX_LMDB_KEY else packed


def unpack_conversation(value: bytes) -> ConversationRecord:
    """Decode a ``conversations`` value."""
    return ConversationRecord(*CONVERSATION_VALUE.unpack_from(value))


# LMDB's largest key, and the largest conversation key (two halves in live_conversations).
MAX_LMDB_KEY: Final = 511
MAX_CONVERSATION_KEY: Final = MAX_CONVERSATION_KEY_BYTES
LONG_KEY_MARK: Final = b"\xff"
# Databases opened with sorted duplicates (DUPSORT).
DUPSORT_DATABASES: Final = frozenset({LIVE_CONVERSATIONS})


def record_key(key: bytes) -> bytes:
    """The ``conversations`` key of a conversation key (UTF-8, at most 1000 bytes)."""
    if len(key) <= MAX_LMDB_KEY:
        return key
    return key[: MAX_LMDB_KEY - 33] + LONG_KEY_MARK + hashlib.sha256(key).digest()


def full_key(stored_key: bytes, value: bytes) -> bytes:
    """The conversation key of a ``conversations`` entry (its UTF-8)."""
    return value[CONVERSATION_VALUE.size :] if len(value) > CONVERSATION_VALUE.size else stored_key


def live_entry(key: bytes) -> tuple[bytes, bytes]:
    """The ``live_conversations`` (key, value) of a conversation key (or of a bound: a
    longer one is cut to what LMDB compares, sorting at or before the bound)."""
    return key[:MAX_LMDB_KEY], (b"\0" + key[MAX_LMDB_KEY:])[:MAX_LMDB_KEY]


def from_live_entry(key: bytes, value: bytes) -> bytes:
    """The conversation key of a ``live_conversations`` (key, value)."""
    return key + value[1:]


def by_write_key(last_write_ns: int, thread_key: bytes) -> bytes:
    """A ``threads_by_write`` key."""
    return U64.pack(last_write_ns) + thread_key


def migrate(txn: Any, dbs: dict[bytes, Any], stored_version: int) -> int:
    """Bring a data directory's layout from ``stored_version`` to :data:`SCHEMA_VERSION`.

    Runs in the write transaction that opens the directory, so a migration
    is all or nothing; returns the version written. 1 -> 2 fills
    ``threads_by_write`` from ``threads`` (one pass, in key order); 2 -> 3
    fills ``live_conversations`` from the ``conversations`` entries that hold
    a snapshot (one pass, in key order).
    """
    if stored_version < 2:
        index = dbs[THREADS_BY_WRITE]
        with txn.cursor(db=dbs[THREADS]) as cursor:
            for key, value in cursor.iternext():
                record = unpack_thread(bytes(value))
                txn.put(by_write_key(record.last_write_ns, bytes(key)), b"", db=index)
    if stored_version < 3:
        live = dbs[LIVE_CONVERSATIONS]
        with txn.cursor(db=dbs[CONVERSATIONS]) as cursor:
            for key, value in cursor.iternext():
                if unpack_conversation(bytes(value)).current_version:
                    txn.put(*live_entry(bytes(key)), db=live)
    txn.put(META_SCHEMA_VERSION, U64.pack(SCHEMA_VERSION), db=dbs[META])
    return SCHEMA_VERSION
