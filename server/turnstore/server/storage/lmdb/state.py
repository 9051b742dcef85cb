"""What the LMDB engine's parts share: :class:`LmdbState` (the environment, its named
databases, the configuration, the space guard and the resize gate) and the helpers that
every function over an LMDB transaction uses.

The engine (:mod:`turnstore.server.storage.lmdb.engine`) makes one state when it opens
and hands it to its writer (:mod:`.writer`) and to the functions of :mod:`.turns`,
:mod:`.snapshots`, :mod:`.reads`, :mod:`.operations` and :mod:`.retention`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lmdb

from turnstore.server.storage.config import EngineConfig, Limits
from turnstore.server.storage.lmdb import schema
from turnstore.server.storage.lmdb.commit_sync import DurableMark
from turnstore.server.storage.lmdb.space import SpaceGuard


class ResizeGate:
    """Lets many readers in at once, or the map resizer alone.

    LMDB may only change its map size while this process has no open
    transaction, so readers hold the gate for the length of one transaction.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def resizing(self) -> Iterator[None]:
        with self._cond:
            self._resizing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


@dataclass(frozen=True)
class LmdbState:
    """An open LMDB engine's environment and what every part of it reads.

    ``dbs`` maps each name of :data:`schema.ALL_DATABASES` to its handle.
    Nothing here changes after the engine opens (the space guard and the gate
    keep their own, locked, state), so the parts share it without a lock.
    """

    config: EngineConfig
    env: lmdb.Environment
    dbs: dict[bytes, Any]
    space: SpaceGuard
    # XORed into thread numbers to make the epochs readers see (storage.epochs).
    epoch_mask: int = 0
    gate: ResizeGate = field(default_factory=ResizeGate)
    # The last commit known durable: readers wait for a later one (--commit-sync journal).
    durable: DurableMark = field(default_factory=DurableMark)

    @property
    def limits(self) -> Limits:
        return self.config.limits

    @property
    def map_size(self) -> int:
        """The current LMDB map size in bytes."""
        return int(self.env.info()["map_size"])

    @contextlib.contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        """A read transaction whose values are copied out as bytes."""
        with self.gate.reading(), self.env.begin(buffers=False) as txn:
            self.durable.wait_for(txn.id())
            yield txn

    @contextlib.contextmanager
    def read_in_place(self) -> Iterator[lmdb.Transaction]:
        """A read transaction whose values are buffers on the map, valid until the next call.

        For reads that only measure or peek at values: ``len`` of a buffer
        reads none of its pages. The helpers here (:func:`get`,
        :func:`pairs`, :func:`keys`) copy what they return, so they work in
        it too.
        """
        with self.gate.reading(), self.env.begin(buffers=True) as txn:
            self.durable.wait_for(txn.id())
            yield txn


def as_bytes(value: bytes | memoryview) -> bytes:
    """An LMDB result as bytes (a copy when it is a buffer of an in-place read)."""
    return value if isinstance(value, bytes) else bytes(value)


def get(txn: lmdb.Transaction, key: bytes, db: Any) -> bytes | None:
    """The value under ``key`` as bytes, or None."""
    value = txn.get(key, db=db)
    return None if value is None else as_bytes(value)


def pairs(cursor: lmdb.Cursor) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) from the cursor's position on, as bytes."""
    for key, value in cursor.iternext():
        yield as_bytes(key), as_bytes(value)


def keys(cursor: lmdb.Cursor) -> Iterator[bytes]:
    """Keys from the cursor's position on, as bytes (values are not read)."""
    for key in cursor.iternext(keys=True, values=False):
        yield as_bytes(key)


def delete_prefix(txn: lmdb.Transaction, db: Any, prefix: bytes) -> int:
    """Delete every key that starts with ``prefix``; return how many."""
    removed = 0
    with txn.cursor(db=db) as cursor:
        if not cursor.set_range(prefix):
            return removed
        while as_bytes(cursor.key()).startswith(prefix):
            if not cursor.delete():
                break
            removed += 1
    return removed


def decode_key(key: bytes) -> str:
    """A thread id or conversation key as stored, back to text."""
    return key.decode("utf-8", "surrogatepass")


def next_number(state: LmdbState, txn: lmdb.Transaction, counter: bytes) -> int:
    """Take the next thread or conversation number from its ``meta`` counter (in a write)."""
    meta = state.dbs[schema.META]
    value = get(txn, counter, meta)
    number = schema.U64.unpack(value)[0] if value is not None else 1
    txn.put(counter, schema.U64.pack(number + 1), db=meta)
    return number
