"""Conversation snapshots: versioned saves with optimistic concurrency, loads, kept versions.

One layer of the LMDB engine (see :mod:`turnstore.server.storage.lmdb.engine`): a mixin over
:class:`_TurnWrites`.
"""

from __future__ import annotations

from concurrent.futures import Future
from typing import TypeVar

import lmdb

from turnstore.server.storage.errors import (
    VersionConflictError,
)
from turnstore.server.storage.lmdb import schema
from turnstore.server.storage.lmdb.space import (
    estimate_value_bytes,
)
from turnstore.server.storage.lmdb.state import (
    _delete_prefix,
    _get,
    _keys,
)
from turnstore.server.storage.lmdb.turns import _TurnWrites
from turnstore.server.storage.values import (
    SnapshotVersion,
    StoredSnapshot,
)

T = TypeVar("T")


class _Snapshots(_TurnWrites):
    """Conversation snapshots: versioned saves with optimistic concurrency, loads, kept versions."""

    def save_snapshot(
        self, key: str, data: bytes, content_type: str, expected_version: int | None = None
    ) -> Future[int]:
        """Store a snapshot under a key as a full overwrite; resolves to its version.

        Versions start at 1 and grow by one per save of the key; a delete does
        not restart them. With ``expected_version``, fails with
        VersionConflictError unless it equals the current version (0 when no
        snapshot is stored). Only the newest ``snapshot_versions_kept``
        versions are kept.
        """
        encoded_key = self._conversation_key(key)
        content_type_bytes = self._checked_snapshot(data, content_type)
        kept = self.config.snapshot_versions_kept

        def apply(txn: lmdb.Transaction, now_ns: int) -> int:
            conversations = self._dbs[schema.CONVERSATIONS]
            snapshots = self._dbs[schema.SNAPSHOTS]
            value = _get(txn, encoded_key, conversations)
            if value is None:
                number, latest, current = 0, 0, 0
            else:
                number, latest, current, _ = schema.unpack_conversation(value)
            if expected_version is not None and expected_version != current:
                raise VersionConflictError(key, expected_version, current)
            self.space.admit(
                txn, estimate_value_bytes(len(data) + 64) + estimate_value_bytes(len(key) + 32)
            )
            if value is None:
                number = self._next_number(txn, schema.META_NEXT_CONVERSATION_NUMBER)
            version = latest + 1
            header = schema.SNAPSHOT_HEADER.pack(now_ns, len(content_type_bytes))
            versions = self._dbs[schema.SNAPSHOT_VERSIONS]
            txn.put(
                schema.PAIR.pack(number, version), header + content_type_bytes + data, db=snapshots
            )
            txn.put(
                schema.PAIR.pack(number, version),
                schema.pack_snapshot_version(now_ns, len(data), content_type_bytes),
                db=versions,
            )
            if version > kept:
                txn.delete(schema.PAIR.pack(number, version - kept), db=snapshots)
                txn.delete(schema.PAIR.pack(number, version - kept), db=versions)
            txn.put(
                encoded_key,
                schema.pack_conversation(number, version, version, now_ns),
                db=conversations,
            )
            return version

        return self._submit(None, apply)

    def delete_snapshots(self, key: str) -> Future[int]:
        """Delete every kept version of a key; resolves to how many there were.

        Succeeds (with 0) for an unknown key. The key's version counter is
        kept, so the next save gets a higher version than any before.
        """
        encoded_key = self._conversation_key(key)

        def apply(txn: lmdb.Transaction, now_ns: int) -> int:
            conversations = self._dbs[schema.CONVERSATIONS]
            value = _get(txn, encoded_key, conversations)
            if value is None:
                return 0
            number, latest, _, _ = schema.unpack_conversation(value)
            removed = _delete_prefix(txn, self._dbs[schema.SNAPSHOTS], schema.U64.pack(number))
            _delete_prefix(txn, self._dbs[schema.SNAPSHOT_VERSIONS], schema.U64.pack(number))
            txn.put(
                encoded_key, schema.pack_conversation(number, latest, 0, now_ns), db=conversations
            )
            self.space.note_freed()
            return removed

        return self._submit(None, apply, frees=True)

    def load_snapshot(self, key: str, version: int | None = None) -> StoredSnapshot | None:
        """The latest snapshot under a key, or the given kept version.

        None when the key was never saved, was deleted, or the version is not
        kept. The data is copied out of the map once (no intermediate copy
        of the whole record).
        """
        encoded_key = self._conversation_key(key)
        if version is not None:
            self._check_turn(version)
        with self._read_in_place() as txn:
            value = _get(txn, encoded_key, self._dbs[schema.CONVERSATIONS])
            if value is None:
                return None
            number, _, current, _ = schema.unpack_conversation(value)
            wanted = current if version is None else version
            if not wanted:
                return None
            record = txn.get(schema.PAIR.pack(number, wanted), db=self._dbs[schema.SNAPSHOTS])
            if record is None:
                return None
            saved_at, content_type, data_start = _snapshot_header(record)
            return StoredSnapshot(wanted, content_type, bytes(record[data_start:]), saved_at)

    def list_snapshot_versions(self, key: str) -> list[SnapshotVersion]:
        """The kept versions of a key, newest first: metadata and sizes only.

        Empty for an unknown or deleted key. Reads ``snapshot_versions`` and
        the keys of ``snapshots``, never a snapshot's data (versions saved
        before schema version 2 have their header read instead, which maps
        their pages).
        """
        encoded_key = self._conversation_key(key)
        out: list[SnapshotVersion] = []
        with self._read_in_place() as txn:
            value = _get(txn, encoded_key, self._dbs[schema.CONVERSATIONS])
            if value is None:
                return out
            prefix = schema.U64.pack(schema.unpack_conversation(value).number)
            versions = self._dbs[schema.SNAPSHOT_VERSIONS]
            with txn.cursor(db=self._dbs[schema.SNAPSHOTS]) as cursor:
                found = cursor.set_range(prefix)
                snapshot_keys = []
                for snapshot_key in _keys(cursor) if found else ():
                    if not snapshot_key.startswith(prefix):
                        break
                    snapshot_keys.append(snapshot_key)
            for snapshot_key in snapshot_keys:
                version = schema.PAIR.unpack(snapshot_key)[1]
                meta = _get(txn, snapshot_key, versions)
                if meta is not None:
                    saved_at, size, content_type = schema.unpack_snapshot_version(meta)
                else:
                    record = txn.get(snapshot_key, db=self._dbs[schema.SNAPSHOTS])
                    if record is None:
                        continue
                    saved_at, content_type, data_start = _snapshot_header(record)
                    size = len(record) - data_start
                out.append(SnapshotVersion(version, content_type, size, saved_at))
        out.reverse()
        return out


def _snapshot_header(record: bytes | memoryview) -> tuple[int, str, int]:
    """A ``snapshots`` value's saved time, content type, and where its data starts."""
    saved_at, content_type_length = schema.SNAPSHOT_HEADER.unpack_from(record)
    start = schema.SNAPSHOT_HEADER.size
    content_type = bytes(record[start : start + content_type_length]).decode("utf-8")
    return saved_at, content_type, start + content_type_length
