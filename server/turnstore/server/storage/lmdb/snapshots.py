"""Conversation snapshots: versioned saves with optimistic concurrency, deletes, loads, and
the kept versions.

:func:`save` and :func:`delete` are applied by the writer (:mod:`.writer`) in
its shared write transaction; :func:`load` and :func:`list_versions` run in an
in-place read (:meth:`LmdbState.read_in_place`), so a snapshot's data is copied
out of the map once.
"""

from __future__ import annotations

import lmdb

from turnstore.server.storage.batches import (
    BatchOp,
    BatchResult,
    DeleteOp,
    SaveOp,
    at_operation,
)
from turnstore.server.storage.errors import EngineError, VersionConflictError
from turnstore.server.storage.lmdb import live_keys, schema
from turnstore.server.storage.lmdb.recording import begin_nested
from turnstore.server.storage.lmdb.space import estimate_value_bytes
from turnstore.server.storage.lmdb.state import (
    LmdbState,
    decode_key,
    delete_prefix,
    get,
    keys,
    next_number,
)
from turnstore.server.storage.values import SnapshotVersion, StoredSnapshot


def save(
    state: LmdbState,
    txn: lmdb.Transaction,
    now_ns: int,
    key: str,
    encoded_key: bytes,
    data: bytes,
    content_type: bytes,
    expected_version: int | None,
) -> int:
    """Store a snapshot under a key as a full overwrite; its version.

    Versions grow by one per save of the key (a delete keeps the counter).
    VersionConflictError unless ``expected_version`` (when given) is the
    current version, 0 for none. Only the newest
    ``config.snapshot_versions_kept`` versions stay.
    """
    conversations = state.dbs[schema.CONVERSATIONS]
    snapshots = state.dbs[schema.SNAPSHOTS]
    record_key = schema.record_key(encoded_key)
    value = get(txn, record_key, conversations)
    if value is None:
        number, latest, current = 0, 0, 0
    else:
        number, latest, current, _ = schema.unpack_conversation(value)
    if expected_version is not None and expected_version != current:
        raise VersionConflictError(key, expected_version, current)
    state.space.admit(
        txn, estimate_value_bytes(len(data) + 64) + estimate_value_bytes(len(key) + 32)
    )
    if value is None:
        number = next_number(state, txn, schema.META_NEXT_CONVERSATION_NUMBER)
    version = latest + 1
    kept = state.config.snapshot_versions_kept
    header = schema.SNAPSHOT_HEADER.pack(now_ns, len(content_type))
    versions = state.dbs[schema.SNAPSHOT_VERSIONS]
    txn.put(schema.PAIR.pack(number, version), header + content_type + data, db=snapshots)
    txn.put(
        schema.PAIR.pack(number, version),
        schema.pack_snapshot_version(now_ns, len(data), content_type),
        db=versions,
    )
    if version > kept:
        txn.delete(schema.PAIR.pack(number, version - kept), db=snapshots)
        txn.delete(schema.PAIR.pack(number, version - kept), db=versions)
    txn.put(
        record_key,
        schema.pack_conversation(number, version, version, now_ns, encoded_key),
        db=conversations,
    )
    if not current:
        live_keys.add(state, txn, encoded_key)
    return version


def delete(
    state: LmdbState,
    txn: lmdb.Transaction,
    now_ns: int,
    encoded_key: bytes,
    expected_version: int | None = None,
) -> int:
    """Delete every kept version of a key (a write that frees); how many there were.

    0 for an unknown key. The key's version counter is kept.
    VersionConflictError unless ``expected_version`` (when given) is the
    current version, 0 for none.
    """
    conversations = state.dbs[schema.CONVERSATIONS]
    record_key = schema.record_key(encoded_key)
    value = get(txn, record_key, conversations)
    current = 0 if value is None else schema.unpack_conversation(value).current_version
    if expected_version is not None and expected_version != current:
        raise VersionConflictError(decode_key(encoded_key), expected_version, current)
    if value is None:
        return 0
    number, latest, _, _ = schema.unpack_conversation(value)
    live_keys.remove(state, txn, encoded_key)
    removed = delete_prefix(txn, state.dbs[schema.SNAPSHOTS], schema.U64.pack(number))
    delete_prefix(txn, state.dbs[schema.SNAPSHOT_VERSIONS], schema.U64.pack(number))
    txn.put(
        record_key,
        schema.pack_conversation(number, latest, 0, now_ns, encoded_key),
        db=conversations,
    )
    state.space.note_freed()
    return removed


def load(
    state: LmdbState, txn: lmdb.Transaction, encoded_key: bytes, version: int | None
) -> StoredSnapshot | None:
    """The latest snapshot under a key, or the given kept version; None when there is none.

    Meant for an in-place read: the data is copied out of the map once (no
    intermediate copy of the whole record).
    """
    value = get(txn, schema.record_key(encoded_key), state.dbs[schema.CONVERSATIONS])
    if value is None:
        return None
    number, _, current, _ = schema.unpack_conversation(value)
    wanted = current if version is None else version
    if not wanted:
        return None
    record = txn.get(schema.PAIR.pack(number, wanted), db=state.dbs[schema.SNAPSHOTS])
    if record is None:
        return None
    saved_at, content_type, data_start = _snapshot_header(record)
    return StoredSnapshot(wanted, content_type, bytes(record[data_start:]), saved_at)


def list_versions(
    state: LmdbState, txn: lmdb.Transaction, encoded_key: bytes
) -> list[SnapshotVersion]:
    """The kept versions of a key, newest first: metadata and sizes only.

    Empty for an unknown or deleted key. Reads ``snapshot_versions`` and the
    keys of ``snapshots``, never a snapshot's data (versions saved before
    schema version 2 have their header read instead, which maps their pages:
    meant for an in-place read).
    """
    out: list[SnapshotVersion] = []
    value = get(txn, schema.record_key(encoded_key), state.dbs[schema.CONVERSATIONS])
    if value is None:
        return out
    prefix = schema.U64.pack(schema.unpack_conversation(value).number)
    versions = state.dbs[schema.SNAPSHOT_VERSIONS]
    with txn.cursor(db=state.dbs[schema.SNAPSHOTS]) as cursor:
        found = cursor.set_range(prefix)
        snapshot_keys = []
        for snapshot_key in keys(cursor) if found else ():
            if not snapshot_key.startswith(prefix):
                break
            snapshot_keys.append(snapshot_key)
    for snapshot_key in snapshot_keys:
        version = schema.PAIR.unpack(snapshot_key)[1]
        meta = get(txn, snapshot_key, versions)
        if meta is not None:
            saved_at, size, content_type = schema.unpack_snapshot_version(meta)
        else:
            record = txn.get(snapshot_key, db=state.dbs[schema.SNAPSHOTS])
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


def delete_under(
    state: LmdbState, txn: lmdb.Transaction, now_ns: int, prefix: bytes
) -> tuple[int, int]:
    """Delete every key starting with ``prefix`` that holds a snapshot, keeping their
    counters; (versions removed, keys deleted).

    Walks ``live_conversations`` from the prefix, so it reads only the keys it
    deletes.
    """
    found: list[bytes] = []
    for key in live_keys.walk_from(state, txn, prefix, descending=False):
        if not key.startswith(prefix):
            break
        found.append(key)
    removed = 0
    for key in found:
        removed += delete(state, txn, now_ns, key)
    return removed, len(found)


# A batch's operation with its key (or prefix) encoded and checked.
CheckedOp = tuple[BatchOp, bytes, bytes]


def apply_batch(
    state: LmdbState, txn: lmdb.Transaction, now_ns: int, operations: list[CheckedOp]
) -> list[BatchResult]:
    """Apply a batch's operations in order, all or nothing, in a transaction nested in the
    writer's, so a refused operation (a version conflict, a full database) leaves none of
    the batch in the commit the writer's other writes share.

    Each entry is (operation, encoded key or prefix, encoded content type).
    """
    child = begin_nested(state.env, txn)  # recorded for the redo journal when txn is
    try:
        results: list[BatchResult] = []
        for index, (operation, encoded, content_type) in enumerate(operations):
            try:
                if isinstance(operation, SaveOp):
                    version = save(
                        state,
                        child,
                        now_ns,
                        operation.key,
                        encoded,
                        operation.data,
                        content_type,
                        operation.expected_version,
                    )
                    results.append(BatchResult(version=version))
                elif isinstance(operation, DeleteOp):
                    live = live_keys.contains(state, child, encoded)
                    removed = delete(state, child, now_ns, encoded, operation.expected_version)
                    results.append(BatchResult(removed_versions=removed, removed_keys=int(live)))
                else:
                    removed, count = delete_under(state, child, now_ns, encoded)
                    results.append(BatchResult(removed_versions=removed, removed_keys=count))
            except VersionConflictError as error:
                child.abort()
                # The version the key is at with nothing of the batch applied.
                value = get(txn, schema.record_key(encoded), state.dbs[schema.CONVERSATIONS])
                current = 0 if value is None else schema.unpack_conversation(value).current_version
                raise at_operation(index, error.at_version(current)) from None
            except EngineError as error:
                raise at_operation(index, error) from None
    except VersionConflictError:
        raise
    except BaseException:
        child.abort()
        raise
    child.commit()
    return results
