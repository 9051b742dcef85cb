"""At open, before anything reads: replay the redo journal's record of a commit whose
LMDB meta page was lost (docs/one-sync.md), and give the journal a position to
continue from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lmdb

from turnstore.server.storage.lmdb import schema
from turnstore.server.storage.lmdb.recording import Op, apply_ops, decode_ops
from turnstore.server.storage.lmdb.redo_journal import (
    META_REDO_POSITION,
    Position,
    find_next,
    read_journal,
    read_position,
)


def replay(env: lmdb.Environment, data_dir: Path) -> int:
    """Apply every valid journal record after LMDB's position, each in one transaction
    synced in full (data and meta); return how many.

    There is at most one such record for a commit that was acknowledged (the
    last one; see the note), possibly followed by one of a commit cut off by the
    power cut, which is whole (its CRC holds) and so is applied too, as LMDB
    may or may not keep a commit that was never acknowledged. A record that
    fails its CRC is a commit never acknowledged: ignored. Nothing is replayed
    into a restored backup (its ``restored_backup`` mark is still set): the
    journal beside it, if any, belongs to another database.
    """
    # A write transaction: a database handle opened in it outlives it.
    with env.begin(write=True) as txn:
        meta = _open_existing(env, txn, schema.META)
        if meta is None:  # a new directory
            return 0
        position = read_position(txn, meta)
        restored = txn.get(schema.META_RESTORED_BACKUP, db=meta) is not None
    if position is None or restored:
        return 0
    journal = read_journal(data_dir)
    replayed = 0
    while (found := find_next(journal, position)) is not None:
        position, payload = found
        ops = decode_ops(payload)
        while True:
            try:
                _apply(env, meta, ops, position)
                break
            except lmdb.MapFullError:
                # The map may start smaller than the commit once needed (it grew then).
                env.set_mapsize(int(env.info()["map_size"]) * 2)
        env.sync(True)  # the meta page too: this commit is durable before the next one
        replayed += 1
    return replayed


def _apply(env: lmdb.Environment, meta: Any, ops: list[Op], position: Position) -> None:
    with env.begin(write=True) as txn:
        dbs: dict[bytes, Any] = {}
        for name in dict.fromkeys(op[1] for op in ops):
            dbs[name] = env.open_db(
                name, txn=txn, create=False, dupsort=name in schema.DUPSORT_DATABASES
            )
        apply_ops(txn, dbs, ops)
        txn.put(META_REDO_POSITION, position.pack(), db=meta)


def ensure_position(
    txn: lmdb.Transaction, meta: Any, restored_backup: bool
) -> tuple[Position, bool]:
    """The journal's position, written (a new salt) when missing or for a restored
    backup; returns it and whether it was written."""
    position = read_position(txn, meta)
    if position is None or restored_backup:
        position = Position.fresh()
        txn.put(META_REDO_POSITION, position.pack(), db=meta)
        return position, True
    return position, False


def _open_existing(env: lmdb.Environment, txn: lmdb.Transaction, name: bytes) -> Any:
    try:
        return env.open_db(name, txn=txn, create=False)
    except lmdb.NotFoundError:
        return None
