"""A write transaction that records every change it makes, so the redo journal
(:mod:`.redo_journal`) can replay a commit whose LMDB meta page a power cut lost.

:class:`RecordingTxn` wraps the writer's ``lmdb.Transaction``: reads pass through,
and every mutation (``put``, ``delete``, ``pop``, ``replace``, and the same on
cursors, ``putmulti`` included) is appended to :attr:`RecordingTxn.ops` *as the
call it was* (database, key, value, flags), in order. Replaying those calls with
:func:`apply_ops` on the state the transaction began from does exactly what the
transaction did, because each call's effect depends only on that state and the
calls before it. The one positional mutation, ``Cursor.delete``, is recorded as
the key (and, in a dupsort database, the value) the cursor stood on.

A nested transaction (:func:`begin_nested`) records into its own list, merged into
its parent's at commit and dropped at abort, as LMDB does with its changes.
``drop`` is refused: the engine never empties a database that way.
``tests/test_redo_journal.py`` replays every record of a workload that takes
every write path onto an empty database and compares the two, so a mutation
that bypasses the recorder fails it.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import lmdb

# One recorded call: (op, database name, key, value, flags).
Op = tuple[int, bytes, bytes, bytes, int]

PUT: Final = 1
DELETE: Final = 2  # txn.delete(key, value): value b"" deletes every duplicate
DELETE_PAIR: Final = 3  # exactly this key/value pair (a cursor's delete in a dupsort db)
REPLACE: Final = 4
POP: Final = 5

FLAG_DUPDATA: Final = 1
FLAG_OVERWRITE: Final = 2
FLAG_APPEND: Final = 4

_OP_HEADER: Final = struct.Struct("<BBBxII")  # op, flags, name length, key length, value length


def put_flags(dupdata: bool, overwrite: bool, append: bool) -> int:
    return (
        (FLAG_DUPDATA if dupdata else 0)
        | (FLAG_OVERWRITE if overwrite else 0)
        | (FLAG_APPEND if append else 0)
    )


class RecordingCursor:
    """A cursor of a :class:`RecordingTxn`: its mutations are recorded, the rest passes."""

    def __init__(self, cursor: lmdb.Cursor, name: bytes, dupsort: bool, ops: list[Op]) -> None:
        self._cursor = cursor
        self._name = name
        self._dupsort = dupsort
        self._ops = ops

    def __getattr__(self, attribute: str) -> Any:
        # Reads and positioning (set_key, iternext, getmulti, ...) change nothing.
        return getattr(self._cursor, attribute)

    def __enter__(self) -> RecordingCursor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._cursor.close()

    def __iter__(self) -> Any:
        return iter(self._cursor)

    def put(
        self,
        key: bytes,
        value: bytes,
        dupdata: bool = True,
        overwrite: bool = True,
        append: bool = False,
    ) -> bool:
        # Recorded once made (a call that raises is not recorded); one that changed
        # nothing (False) changes nothing when replayed either.
        stored = bool(self._cursor.put(key, value, dupdata, overwrite, append))
        flags = put_flags(dupdata, overwrite, append)
        self._ops.append((PUT, self._name, bytes(key), bytes(value), flags))
        return stored

    def putmulti(
        self,
        items: Any,
        dupdata: bool = True,
        overwrite: bool = True,
        append: bool = False,
    ) -> tuple[int, int]:
        items = [(bytes(key), bytes(value)) for key, value in items]
        consumed, added = self._cursor.putmulti(items, dupdata, overwrite, append)
        flags = put_flags(dupdata, overwrite, append)
        self._ops.extend((PUT, self._name, key, value, flags) for key, value in items[:consumed])
        return int(consumed), int(added)

    def delete(self, dupdata: bool = False) -> bool:
        key = bytes(self._cursor.key())
        if self._dupsort and not dupdata:
            op: Op = (DELETE_PAIR, self._name, key, bytes(self._cursor.value()), 0)
        else:
            op = (DELETE, self._name, key, b"", 0)
        deleted = bool(self._cursor.delete(dupdata))
        if deleted:
            self._ops.append(op)
        return deleted

    def replace(self, key: bytes, value: bytes) -> Any:
        old = self._cursor.replace(key, value)
        self._ops.append((REPLACE, self._name, bytes(key), bytes(value), 0))
        return old

    def pop(self, key: bytes) -> Any:
        old = self._cursor.pop(key)
        self._ops.append((POP, self._name, bytes(key), b"", 0))
        return old


class RecordingTxn:
    """A write transaction's stand-in that records its mutations in :attr:`ops`.

    ``names`` maps each database handle the engine writes (by ``id``) to its
    name and whether it is dupsort. Passed to the writes as an
    ``lmdb.Transaction`` (``typing.cast``): they use its methods only.
    """

    def __init__(self, txn: lmdb.Transaction, names: dict[int, tuple[bytes, bool]]) -> None:
        self.txn = txn
        self.names = names
        self.ops: list[Op] = []
        # The hot read passes straight through.
        self.get = txn.get

    def __getattr__(self, attribute: str) -> Any:
        if attribute == "drop":
            raise NotImplementedError("drop is not recorded by the redo journal")
        return getattr(self.txn, attribute)

    def __enter__(self) -> RecordingTxn:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def _name(self, db: Any) -> tuple[bytes, bool]:
        try:
            return self.names[id(db)]
        except KeyError:
            raise ValueError("a write to a database the redo journal does not know") from None

    def cursor(self, db: Any = None) -> RecordingCursor:
        name, dupsort = self._name(db)
        return RecordingCursor(self.txn.cursor(db=db), name, dupsort, self.ops)

    def put(
        self,
        key: bytes,
        value: bytes,
        dupdata: bool = True,
        overwrite: bool = True,
        append: bool = False,
        db: Any = None,
    ) -> bool:
        name = self._name(db)[0]
        stored = bool(self.txn.put(key, value, dupdata, overwrite, append, db=db))
        self.ops.append(
            (PUT, name, bytes(key), bytes(value), put_flags(dupdata, overwrite, append))
        )
        return stored

    def delete(self, key: bytes, value: bytes = b"", db: Any = None) -> bool:
        name = self._name(db)[0]
        deleted = bool(self.txn.delete(key, value, db=db))
        if deleted:
            self.ops.append((DELETE, name, bytes(key), bytes(value), 0))
        return deleted

    def replace(self, key: bytes, value: bytes, db: Any = None) -> Any:
        name = self._name(db)[0]
        old = self.txn.replace(key, value, db=db)
        self.ops.append((REPLACE, name, bytes(key), bytes(value), 0))
        return old

    def pop(self, key: bytes, db: Any = None) -> Any:
        name = self._name(db)[0]
        old = self.txn.pop(key, db=db)
        self.ops.append((POP, name, bytes(key), b"", 0))
        return old

    def commit(self) -> None:
        self.txn.commit()

    def abort(self) -> None:
        self.txn.abort()


class _NestedRecordingTxn(RecordingTxn):
    """A child of a :class:`RecordingTxn`: its calls reach the parent's record at commit."""

    def __init__(self, parent: RecordingTxn, txn: lmdb.Transaction) -> None:
        super().__init__(txn, parent.names)
        self._parent = parent

    def commit(self) -> None:
        self.txn.commit()
        self._parent.ops.extend(self.ops)


def begin_nested(env: lmdb.Environment, txn: lmdb.Transaction) -> lmdb.Transaction:
    """A write transaction nested in ``txn`` (recording when ``txn`` records)."""
    parent: object = txn
    if isinstance(parent, RecordingTxn):
        child = env.begin(write=True, parent=parent.txn)
        nested: object = _NestedRecordingTxn(parent, child)
        return nested  # type: ignore[return-value]
    return env.begin(write=True, parent=txn)


def encode_ops(ops: list[Op]) -> bytes:
    """The recorded calls as bytes (see :func:`decode_ops`)."""
    parts: list[bytes] = []
    for op, name, key, value, flags in ops:
        parts += (_OP_HEADER.pack(op, flags, len(name), len(key), len(value)), name, key, value)
    return b"".join(parts)


def decode_ops(data: bytes) -> list[Op]:
    """The calls :func:`encode_ops` encoded; ValueError when ``data`` is malformed."""
    ops: list[Op] = []
    view = memoryview(data)
    offset = 0
    while offset < len(data):
        if offset + _OP_HEADER.size > len(data):
            raise ValueError("a truncated redo operation")
        op, flags, name_len, key_len, value_len = _OP_HEADER.unpack_from(view, offset)
        offset += _OP_HEADER.size
        end = offset + name_len + key_len + value_len
        if end > len(data) or op not in (PUT, DELETE, DELETE_PAIR, REPLACE, POP):
            raise ValueError("a malformed redo operation")
        name = bytes(view[offset : offset + name_len])
        key = bytes(view[offset + name_len : offset + name_len + key_len])
        ops.append((op, name, key, bytes(view[offset + name_len + key_len : end]), flags))
        offset = end
    return ops


def apply_ops(txn: lmdb.Transaction, dbs: dict[bytes, Any], ops: list[Op]) -> None:
    """Make the recorded calls again, in order, in ``txn`` (``dbs``: handles by name)."""
    for op, name, key, value, flags in ops:
        db = dbs[name]
        if op == PUT:
            txn.put(
                key,
                value,
                dupdata=bool(flags & FLAG_DUPDATA),
                overwrite=bool(flags & FLAG_OVERWRITE),
                append=bool(flags & FLAG_APPEND),
                db=db,
            )
        elif op == DELETE:
            txn.delete(key, value, db=db)
        elif op == DELETE_PAIR:
            with txn.cursor(db=db) as cursor:
                if cursor.set_key_dup(key, value):
                    cursor.delete()
        elif op == REPLACE:
            txn.replace(key, value, db=db)
        else:
            txn.pop(key, db=db)
