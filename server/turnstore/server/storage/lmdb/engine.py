"""The storage engine: turn-scoped event streams and snapshots in LMDB.

Writes go through one writer thread that commits every write waiting in its
queue in one LMDB transaction, fsyncs once, and then resolves each write's
future (group commit). A write's future resolves only after its transaction
is durably committed. Each write checks all its preconditions before it
changes anything, so a rejected write leaves no trace in the shared
transaction.

Reads are plain blocking methods, safe to call from any thread; each uses its
own short read transaction. Reads that span several calls (streams of chunks)
take a :class:`ThreadView` first and are bounded by it.

The engine never imports gRPC or generated code; it raises the exceptions of
:mod:`turnstore.server.storage.errors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import queue
import threading
from pathlib import Path
from typing import IO, TypeVar

import lmdb

from turnstore.server.storage.epochs import new_epoch_mask
from turnstore.server.storage.errors import (
    DataDirLockedError,
)
from turnstore.server.storage.interface import (
    CommitListener,
    CommitObserver,
    SpaceLevelListener,
    WakeAll,
)
from turnstore.server.storage.lmdb import backups, schema
from turnstore.server.storage.lmdb.retention import _Retention
from turnstore.server.storage.lmdb.space import (
    SpaceGuard,
    default_reserve,
)
from turnstore.server.storage.lmdb.state import (
    RETENTION_BATCH_EVENTS,
    RETENTION_BATCH_ITEMS,
    RETENTION_SCAN_PAGE,
    _get,
    _ResizeGate,
    _RetentionState,
    _Write,
)
from turnstore.server.storage.values import (
    EngineConfig,
)

__all__ = ["RETENTION_BATCH_EVENTS", "RETENTION_BATCH_ITEMS", "RETENTION_SCAN_PAGE", "Engine"]

T = TypeVar("T")


class Engine(_Retention):
    """turnstore's storage engine. Open with :meth:`open`, close with :meth:`close`.

    Writes (:meth:`append`, :meth:`finish_turn`, :meth:`clear`,
    :meth:`save_snapshot`) return a :class:`concurrent.futures.Future` that
    resolves once the write is durably committed, or fails with an
    :class:`~turnstore.server.storage.errors.EngineError`. Reads block and return.

    Operations (docs/operations.md): :meth:`list_threads`, :meth:`list_keys`
    and :meth:`storage_stats` are reads; :meth:`backup` copies the database
    and blocks for the copy; :meth:`sweep_retention` removes what the
    configured ages expire, through the writer queue in small batches. When
    an age is set, a background thread runs it every
    ``retention_interval_seconds`` until :meth:`close`.
    """

    def __init__(self, config: EngineConfig, env: lmdb.Environment, lock_file: IO[str]) -> None:
        self.config = config
        self.limits = config.limits
        self._env = env
        self._lock_file = lock_file
        self._dbs = {name: env.open_db(name, create=False) for name in schema.ALL_DATABASES}
        reserve = config.delete_reserve_bytes
        self.space = SpaceGuard(
            [*self._dbs.values(), env.open_db(None)],
            int(env.stat()["psize"]),
            config.max_map_bytes,
            default_reserve(config.max_map_bytes) if reserve is None else reserve,
        )
        self._backup_journal = backups.BackupJournal(Path(config.data_dir))
        with env.begin() as txn:
            mask = _get(txn, schema.META_EPOCH_MASK, self._dbs[schema.META])
        self.epoch_mask = schema.U64.unpack(mask)[0] if mask is not None else 0
        # The transaction id of the last no-op commit (_release_freed_pages).
        self._tick_txnid = -1
        # What :meth:`open` found of backups cut short (the daemon logs it).
        self.removed_partial_backups: list[Path] = []
        self.partial_backup_problems: list[str] = []
        # Whether open() found a backup copy never opened before (new epochs drawn).
        self.opened_restored_backup = False
        self._gate = _ResizeGate()
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._listeners: list[CommitListener] = []
        self._observers: list[CommitObserver] = []
        self._writer = threading.Thread(target=self._write_loop, name="turnstore-writer")
        self._writer.start()
        self._retention = _RetentionState()
        self._retention_thread: threading.Thread | None = None
        if config.retention_enabled:
            self._retention_thread = threading.Thread(
                target=self._retention_loop, name="turnstore-retention", daemon=True
            )
            self._retention_thread.start()

    @classmethod
    def open(cls, config: EngineConfig) -> Engine:
        """Open (creating if needed) the data directory and its LMDB environment.

        Raises :class:`DataDirLockedError` when another process holds the
        directory, and ``ValueError`` when it holds a newer schema version or
        the backup directory is unusable (:func:`backups.check_backup_dir`).
        """
        data_dir = Path(config.data_dir)
        if config.backup_dir is not None:
            backup_dir = backups.check_backup_dir(config.backup_dir, data_dir)
            config = dataclasses.replace(config, backup_dir=backup_dir)
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _make_owner_only(data_dir)
        lock_fd = os.open(data_dir / "turnstore.lock", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        lock_file = os.fdopen(lock_fd, "a+")
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            lock_file.close()
            raise DataDirLockedError(
                f"data directory {str(data_dir)!r} is in use by another turnstore "
                f"process (pid {holder}); stop it or choose another --data-dir"
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        try:
            data_file = data_dir / "data.mdb"
            existing = data_file.stat().st_size if data_file.exists() else 0
            map_size = min(max(config.initial_map_bytes, existing), config.max_map_bytes)
            map_size = max(map_size, existing)
            env = lmdb.open(
                str(data_dir),
                map_size=map_size,
                max_dbs=len(schema.ALL_DATABASES),
                max_readers=config.max_readers,
                sync=True,
                metasync=True,
                readahead=False,
                subdir=True,
                mode=0o600,
            )
            with env.begin(write=True) as txn:
                dbs = {
                    name: env.open_db(name, txn=txn, create=True) for name in schema.ALL_DATABASES
                }
                meta = dbs[schema.META]
                stored = _get(txn, schema.META_SCHEMA_VERSION, meta)
                if stored is None:
                    txn.put(
                        schema.META_SCHEMA_VERSION, schema.U64.pack(schema.SCHEMA_VERSION), db=meta
                    )
                    # Epochs of its own: a cursor of another database never matches.
                    txn.put(schema.META_EPOCH_MASK, schema.U64.pack(new_epoch_mask()), db=meta)
                elif schema.U64.unpack(stored)[0] > schema.SCHEMA_VERSION:
                    raise ValueError(
                        f"data directory {str(data_dir)!r} has schema version "
                        f"{schema.U64.unpack(stored)[0]}, newer than this turnstore "
                        f"({schema.SCHEMA_VERSION})"
                    )
                elif schema.U64.unpack(stored)[0] < schema.SCHEMA_VERSION:
                    schema.migrate(txn, dbs, schema.U64.unpack(stored)[0])
                restored = txn.pop(schema.META_RESTORED_BACKUP, db=meta) is not None
                if restored:
                    txn.put(schema.META_EPOCH_MASK, schema.U64.pack(new_epoch_mask()), db=meta)
        except BaseException:
            lock_file.close()
            raise
        # Leftovers of backups a killed daemon could not remove; none is running yet.
        removed, problems = backups.BackupJournal(data_dir).clean()
        engine = cls(config, env, lock_file)
        engine.removed_partial_backups = removed
        engine.partial_backup_problems = problems
        engine.opened_restored_backup = restored
        return engine

    def close(self) -> None:
        """Commit every write already queued, then close the environment.

        Writes submitted afterwards fail with EngineClosedError. Idempotent.
        """
        self._retention.stop.set()
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._writer.join()
        if self._retention_thread is not None:
            # It ends at its next step: its writes now fail with EngineClosedError.
            self._retention_thread.join()
        self._env.close()
        self._lock_file.close()

    # -- the interface's calls the daemon makes of any backend ------------------

    def add_wake_all_listener(self, wake: WakeAll) -> None:
        """A no-op: this engine's own writer tells the commit listeners of every commit."""

    def add_space_level_listener(self, listener: SpaceLevelListener) -> None:
        """Call ``listener`` when usage crosses a warning level (:class:`SpaceGuard`)."""
        self.space.add_level_listener(listener)

    def startup_report(self) -> dict[str, object]:
        """The data directory, the ceiling and write limit, the backup directory, and
        what :meth:`open` found: a restored backup, partial backups removed or not."""
        report: dict[str, object] = {
            "data_dir": str(self.config.data_dir),
            "max_map_bytes": self.config.max_map_bytes,
            "write_limit_bytes": self.space.write_limit_bytes,
            "backup_dir": str(self.config.backup_dir) if self.config.backup_dir else None,
        }
        if self.opened_restored_backup:
            # Every thread got a new epoch: readers' cursors from before report "cleared".
            report["restored_backup_new_epochs"] = True
        if self.removed_partial_backups:
            report["removed_partial_backups"] = [str(path) for path in self.removed_partial_backups]
        if self.partial_backup_problems:
            report["partial_backups_not_removed"] = self.partial_backup_problems
        return report


def _make_owner_only(data_dir: Path) -> None:
    """Take group and other access away from the data files older versions left open.

    New files are created owner-only; the directory's own mode is left as
    the operator set it.
    """
    for name in ("data.mdb", "lock.mdb", "turnstore.lock"):
        with contextlib.suppress(FileNotFoundError):
            mode = (data_dir / name).stat().st_mode
            if mode & 0o077:
                os.chmod(data_dir / name, mode & 0o700)
