"""Operations: listing threads and keys, statistics, space, and consistent backups.

One layer of the LMDB engine (see :mod:`turnstore.server.storage.lmdb.engine`): a mixin over
:class:`_Reads`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from turnstore.server.storage.errors import (
    EngineClosedError,
)
from turnstore.server.storage.lmdb import backups, schema
from turnstore.server.storage.lmdb.reads import _Reads
from turnstore.server.storage.lmdb.state import (
    _bytes,
    _decode_key,
    _pairs,
)
from turnstore.server.storage.values import (
    LMDB_MAX_KEY_BYTES,
    BackupResult,
    KeySummary,
    SpaceUsage,
    StorageStats,
    ThreadSummary,
)

T = TypeVar("T")


class _Operations(_Reads):
    """Operations: listing threads and keys, statistics, space, and consistent backups."""

    def _page(
        self,
        db_name: bytes,
        start_after: str,
        limit: int,
        keep: Callable[[bytes], bool] | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` entries of a database after a key, in key order."""
        after = start_after.encode("utf-8", "surrogatepass")
        out: list[tuple[bytes, bytes]] = []
        with self._read() as txn, txn.cursor(db=self._dbs[db_name]) as cursor:
            # A key longer than LMDB allows sorts after its truncation.
            found = cursor.set_range(after[:LMDB_MAX_KEY_BYTES]) if after else cursor.first()
            if not found:
                return out
            for key, value in _pairs(cursor):
                if after and key <= after:
                    continue
                if keep is None or keep(value):
                    out.append((key, value))
                    if len(out) >= limit:
                        break
        return out

    def list_threads(self, start_after: str = "", limit: int = 1000) -> list[ThreadSummary]:
        """Up to ``limit`` threads after ``start_after`` ("": from the first).

        Threads come in the byte order of their UTF-8 ids. Each call is one
        read transaction; a listing in several calls sees threads created or
        removed in between, or not.
        """
        out: list[ThreadSummary] = []
        for key, value in self._page(schema.THREADS, start_after, limit):
            record = schema.unpack_thread(value)
            out.append(
                ThreadSummary(
                    _decode_key(key),
                    record.next_position,
                    record.next_finish_seq,
                    record.last_write_ns,
                )
            )
        return out

    def list_recent_threads(
        self, limit: int, keep: Callable[[str], bool] | None = None
    ) -> list[ThreadSummary]:
        """Up to ``limit`` threads, most recently written first (ties: higher id first).

        Walks ``threads_by_write`` backwards in one read transaction, so it
        reads the entries it returns (and those ``keep`` refuses), never the
        whole thread table.
        """
        out: list[ThreadSummary] = []
        threads = self._dbs[schema.THREADS]
        with self._read() as txn, txn.cursor(db=self._dbs[schema.THREADS_BY_WRITE]) as cursor:
            if not cursor.last():
                return out
            for raw_key in cursor.iterprev(keys=True, values=False):
                thread_key = _bytes(raw_key)[schema.U64.size :]
                thread_id = _decode_key(thread_key)
                if keep is not None and not keep(thread_id):
                    continue
                value = txn.get(thread_key, db=threads)
                if value is None:  # never: the writer keeps both in step
                    continue
                record = schema.unpack_thread(_bytes(value))
                out.append(
                    ThreadSummary(
                        thread_id,
                        record.next_position,
                        record.next_finish_seq,
                        record.last_write_ns,
                    )
                )
                if len(out) >= limit:
                    break
        return out

    def list_keys(self, start_after: str = "", limit: int = 1000) -> list[KeySummary]:
        """Up to ``limit`` conversation keys holding a snapshot, after ``start_after``.

        Keys come in the byte order of their UTF-8 form; deleted keys are
        left out. Consistency as for :meth:`list_threads`.
        """
        pages = self._page(
            schema.CONVERSATIONS,
            start_after,
            limit,
            lambda value: schema.unpack_conversation(value).current_version != 0,
        )
        out: list[KeySummary] = []
        for key, value in pages:
            record = schema.unpack_conversation(value)
            out.append(KeySummary(_decode_key(key), record.current_version, record.last_write_ns))
        return out

    def storage_stats(self) -> StorageStats:
        """What the database holds, counted in one read transaction.

        Entry counts come from LMDB's own statistics (constant time);
        ``conversations`` scans the conversation keys, as deleted keys stay
        (they keep their version counters) but hold no snapshot.
        """
        with self._read() as txn:

            def entries(name: bytes) -> int:
                return int(txn.stat(self._dbs[name])["entries"])

            conversations = 0
            with txn.cursor(db=self._dbs[schema.CONVERSATIONS]) as cursor:
                for value in cursor.iternext(keys=False, values=True):
                    if schema.unpack_conversation(_bytes(value)).current_version:
                        conversations += 1
            stats = StorageStats(
                threads=entries(schema.THREADS),
                events=entries(schema.EVENTS),
                turns=entries(schema.TURNS),
                finished_turns=entries(schema.TURN_FINISHES),
                conversations=conversations,
                snapshot_versions=entries(schema.SNAPSHOTS),
                data_file_bytes=0,
                space=self.space.usage(txn),
            )
        size = (Path(self.config.data_dir) / "data.mdb").stat().st_size
        space = dataclasses.replace(stats.space, reserved_bytes=self.map_size, file_bytes=size)
        return dataclasses.replace(stats, data_file_bytes=size, space=space)

    def space_usage(self) -> SpaceUsage:
        """How close the database is to its ceiling, measured in one short read."""
        with self._read() as txn:
            usage = self.space.usage(txn)
        size = (Path(self.config.data_dir) / "data.mdb").stat().st_size
        return dataclasses.replace(usage, reserved_bytes=self.map_size, file_bytes=size)

    def backup(self, dest_dir: str) -> BackupResult:
        """Write a consistent, compacted copy of the database to ``dest_dir``.

        Blocks for the length of the copy; run it off the event loop. The
        copy is taken in one LMDB read transaction (``mdb_env_copyfd2`` with
        compaction), so writers go on meanwhile; only a growth of the map
        waits for it to end. ``dest_dir`` is a path inside the configured
        backup directory (relative to it, or absolute inside it) that does
        not exist or is an empty directory, in an existing parent directory,
        reached without ``..`` or symbolic links. The copy is written to a
        temporary directory beside it, fsynced, and renamed to ``dest_dir``,
        so ``dest_dir`` either holds a whole backup or is unchanged. The
        result is a data directory: ``turnstore serve --data-dir DEST``
        serves it. Raises BackupFailedError when no backup directory is
        configured or writing fails (nothing is left behind then; a copy cut
        short by a kill is removed at the next open), InvalidArgumentError
        for an unacceptable ``dest_dir`` (see :mod:`turnstore.server.storage.lmdb.backups`).
        """
        dest = backups.check_destination(dest_dir, self.config.backup_dir)
        if self._closed:
            raise EngineClosedError("the engine is closed")
        return backups.write_backup(self._env, self._gate.reading, dest, self._backup_journal)
