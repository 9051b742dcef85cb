"""Opening a data directory: its lock file, the LMDB environment, the schema version
(created, migrated, or refused when newer), a restored backup's new epochs, and the
leftovers of backups a killed daemon could not remove.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import lmdb

from turnstore.server.storage.config import EngineConfig
from turnstore.server.storage.epochs import new_epoch_mask
from turnstore.server.storage.errors import DataDirLockedError
from turnstore.server.storage.lmdb import (
    backup_journal,
    backup_paths,
    redo_journal,
    redo_recovery,
    schema,
)
from turnstore.server.storage.lmdb.commit_sync import JOURNAL, lmdb_metasync
from turnstore.server.storage.lmdb.redo_journal import RedoJournal
from turnstore.server.storage.lmdb.space import SpaceGuard, default_reserve
from turnstore.server.storage.lmdb.state import LmdbState, get


@dataclass
class OpenedDirectory:
    """A data directory opened and locked, with what opening it found."""

    # Its configuration is the one given, with the backup directory resolved.
    state: LmdbState
    # Held (flock) for as long as the engine is open: one daemon a directory.
    lock_file: IO[str]
    # Whether it was a backup copy never opened before (new epochs drawn).
    restored_backup: bool
    # Partial backup directories removed, and why others could not be.
    removed_partial_backups: list[Path]
    partial_backup_problems: list[str]
    # The redo journal (--commit-sync journal), for the writer; None otherwise.
    journal: RedoJournal | None = None
    # Journal records replayed at open (commits whose meta page a power cut lost).
    replayed_commits: int = 0


def open_directory(config: EngineConfig) -> OpenedDirectory:
    """Open (creating if needed) the data directory and its LMDB environment.

    Raises :class:`DataDirLockedError` when another process holds the
    directory, and ``ValueError`` when it holds a newer schema version or the
    backup directory is unusable (:func:`backup_paths.check_backup_dir`).
    """
    data_dir = Path(config.data_dir)
    if config.backup_dir is not None:
        backup_dir = backup_paths.check_backup_dir(config.backup_dir, data_dir)
        config = dataclasses.replace(config, backup_dir=backup_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _make_owner_only(data_dir)
    lock_file = _lock(data_dir)
    try:
        env = _open_environment(config, data_dir)
        try:
            # Before anything reads: the commit whose meta page a power cut lost.
            replayed = redo_recovery.replay(env, data_dir)
            restored, position = _prepare(env, data_dir)
            # What opening wrote is durable before any commit relies on it.
            env.sync(True)
            journal = None
            if config.commit_sync == JOURNAL:
                journal = RedoJournal(data_dir, position)
        except BaseException:
            env.close()
            raise
    except BaseException:
        lock_file.close()
        raise
    # Leftovers of backups a killed daemon could not remove; none is running yet.
    removed, problems = backup_journal.BackupJournal(data_dir).clean()
    state = _state(config, env)
    with env.begin() as txn:
        mask = get(txn, schema.META_EPOCH_MASK, state.dbs[schema.META])
    epoch_mask = schema.U64.unpack(mask)[0] if mask is not None else 0
    # XORed into thread numbers to make epochs (0 in databases older than it).
    state = dataclasses.replace(state, epoch_mask=epoch_mask)
    if journal is not None:
        # Readers wait for commits after this one to be durable (commit_sync.DurableMark).
        state.durable.enable(int(env.info()["last_txnid"]))
    return OpenedDirectory(state, lock_file, restored, removed, problems, journal, replayed)


def _state(config: EngineConfig, env: lmdb.Environment) -> LmdbState:
    """The state of an environment prepared by :func:`_prepare`: its databases' handles,
    and the space guard counting their pages."""
    dbs = {
        name: env.open_db(name, create=False, dupsort=name in schema.DUPSORT_DATABASES)
        for name in schema.ALL_DATABASES
    }
    reserve = config.delete_reserve_bytes
    space = SpaceGuard(
        [*dbs.values(), env.open_db(None)],
        int(env.stat()["psize"]),
        config.max_map_bytes,
        default_reserve(config.max_map_bytes) if reserve is None else reserve,
    )
    return LmdbState(config, env, dbs, space)


def _lock(data_dir: Path) -> IO[str]:
    """Take the directory's lock file (holding this pid), or raise DataDirLockedError."""
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
    return lock_file


def _open_environment(config: EngineConfig, data_dir: Path) -> lmdb.Environment:
    """The LMDB environment, its map at least as large as the data file.

    ``sync``: every commit's data pages are fsynced (a write's future resolves
    only after that); ``metasync`` in ``--commit-sync lmdb`` only: in ``journal``
    mode the meta page is made durable by the next commit's sync, and by the
    redo journal until then (docs/one-sync.md).
    """
    data_file = data_dir / "data.mdb"
    existing = data_file.stat().st_size if data_file.exists() else 0
    map_size = min(max(config.initial_map_bytes, existing), config.max_map_bytes)
    map_size = max(map_size, existing)
    return lmdb.open(
        str(data_dir),
        map_size=map_size,
        max_dbs=len(schema.ALL_DATABASES),
        max_readers=config.max_readers,
        sync=True,
        metasync=lmdb_metasync(config.commit_sync),
        readahead=False,
        subdir=True,
        mode=0o600,
    )


def _prepare(env: lmdb.Environment, data_dir: Path) -> tuple[bool, redo_journal.Position]:
    """Create the named databases and the schema version, or check and migrate them.

    Returns whether the directory was a backup never opened before: it gets
    a new epoch mask, so no cursor from the database's later life matches;
    and the redo journal's position (a new salt for a backup or a new database).
    """
    with env.begin(write=True) as txn:
        dbs = {
            name: env.open_db(name, txn=txn, create=True, dupsort=name in schema.DUPSORT_DATABASES)
            for name in schema.ALL_DATABASES
        }
        meta = dbs[schema.META]
        stored = get(txn, schema.META_SCHEMA_VERSION, meta)
        if stored is None:
            txn.put(schema.META_SCHEMA_VERSION, schema.U64.pack(schema.SCHEMA_VERSION), db=meta)
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
        position, _ = redo_recovery.ensure_position(txn, meta, restored)
    return restored, position


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


def startup_report(opened: OpenedDirectory) -> dict[str, object]:
    """The data directory, ceiling, write limit and backup directory, and what
    :func:`open_directory` found: a restored backup, partial backups removed or not."""
    config = opened.state.config
    report: dict[str, object] = {
        "data_dir": str(config.data_dir),
        "max_map_bytes": config.max_map_bytes,
        "write_limit_bytes": opened.state.space.write_limit_bytes,
        "backup_dir": str(config.backup_dir) if config.backup_dir else None,
    }
    if opened.restored_backup:
        # Every thread got a new epoch: readers' cursors from before report "cleared".
        report["restored_backup_new_epochs"] = True
    if opened.replayed_commits:
        # Commits whose meta page was lost (a power cut), redone from the redo journal.
        report["redo_journal_replayed_commits"] = opened.replayed_commits
    if opened.removed_partial_backups:
        report["removed_partial_backups"] = [str(path) for path in opened.removed_partial_backups]
    if opened.partial_backup_problems:
        report["partial_backups_not_removed"] = opened.partial_backup_problems
    return report
