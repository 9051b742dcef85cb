"""``live_conversations``: the sorted index of the conversation keys that hold a snapshot.

Keys of up to 1000 bytes are stored as two halves (:func:`.schema.live_entry`),
so these helpers hide that: they add, remove and test whole keys, and walk
whole keys in order from a bound, forwards or backwards
(:func:`walk_from`). A walk reads one index entry per key it yields.
"""

from __future__ import annotations

from collections.abc import Iterator

import lmdb

from turnstore.server.storage.lmdb import schema
from turnstore.server.storage.lmdb.state import LmdbState, as_bytes


def add(state: LmdbState, txn: lmdb.Transaction, key: bytes) -> None:
    """Mark ``key`` (UTF-8) as holding a snapshot."""
    txn.put(*schema.live_entry(key), db=state.dbs[schema.LIVE_CONVERSATIONS])


def remove(state: LmdbState, txn: lmdb.Transaction, key: bytes) -> bool:
    """Unmark ``key``; whether it was marked. Only its own entry goes (a plain delete of
    the first half would take every key sharing it)."""
    with txn.cursor(db=state.dbs[schema.LIVE_CONVERSATIONS]) as cursor:
        if not cursor.set_key_dup(*schema.live_entry(key)):
            return False
        return bool(cursor.delete())


def contains(state: LmdbState, txn: lmdb.Transaction, key: bytes) -> bool:
    """Whether ``key`` holds a snapshot."""
    with txn.cursor(db=state.dbs[schema.LIVE_CONVERSATIONS]) as cursor:
        return bool(cursor.set_key_dup(*schema.live_entry(key)))


def _seek(cursor: lmdb.Cursor, bound: bytes) -> bool:
    """Stand on the first key at or above ``bound`` (a longer bound: at or above what LMDB
    compares of it); False when there is none."""
    half, rest = schema.live_entry(bound)
    if not cursor.set_range(half):
        return False
    if as_bytes(cursor.key()) != half:
        return True
    if cursor.set_range_dup(half, rest):
        return True
    # Every key starting with this half sorts below the bound: the next half.
    return bool(cursor.set_key(half) and cursor.next_nodup())


def walk_from(
    state: LmdbState, txn: lmdb.Transaction, bound: bytes | None, descending: bool
) -> Iterator[bytes]:
    """Whole keys in order: ascending from the first at or above ``bound`` (None: the
    first key); descending from that same key (None: the last key) down, so a caller
    skips the one at or above its upper bound."""
    with txn.cursor(db=state.dbs[schema.LIVE_CONVERSATIONS]) as cursor:
        if descending:
            found = (bound is not None and _seek(cursor, bound)) or cursor.last()
            walk = cursor.iterprev()
        else:
            found = _seek(cursor, bound) if bound is not None else cursor.first()
            walk = cursor.iternext()
        if not found:
            return
        for half, rest in walk:
            yield schema.from_live_entry(as_bytes(half), as_bytes(rest))
