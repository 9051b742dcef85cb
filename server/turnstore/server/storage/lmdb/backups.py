"""Backups: the atomic, compacted copy of the database into a destination below the backup
directory, marked as a backup.

The destination is checked by :mod:`.backup_paths` (where backups may go, no
links followed). A backup is copied into a hidden directory beside its
destination, ``.NAME.partial-XXXXXXXX``, recorded first in the journal of
:mod:`.backup_journal` (so a copy cut short by a kill is removed at the next
start), created exclusively (``mkdir``, ``O_EXCL``) relative to the opened
parent, fsynced, and renamed to the destination when complete.

A finished copy is marked as a backup (``restored_backup`` in its ``meta``):
the first daemon to open it draws new thread epochs, so a reader's cursor
from the database's later life is answered "cleared", never resumed at a
position that now holds other events.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable
from typing import Final

import lmdb

from turnstore.server.storage.errors import BackupFailedError
from turnstore.server.storage.lmdb import schema
from turnstore.server.storage.lmdb.backup_journal import BackupJournal
from turnstore.server.storage.lmdb.backup_paths import (
    DIRECTORY_FLAGS,
    PARTIAL_INFIX,
    Destination,
    check_last,
    open_parent,
)
from turnstore.server.storage.values import BackupResult

# Partial directories end in 8 random characters of this set.
_SUFFIX_CHARACTERS: Final = "abcdefghijklmnopqrstuvwxyz0123456789_"


def write_backup(
    env: lmdb.Environment,
    reading: Callable[[], contextlib.AbstractContextManager[None]],
    dest: Destination,
    journal: BackupJournal,
) -> BackupResult:
    """Copy ``env`` compacted into ``dest`` (from :func:`.backup_paths.check_destination`).

    ``reading`` guards the copy's read transaction (the map must not be
    resized under it). Every directory below the backup directory is opened
    without following links; the copy goes to a partial directory recorded
    in ``journal`` and created exclusively, which is renamed to ``dest``
    when complete or removed when anything fails. Raises
    InvalidArgumentError for an unusable destination (a link, a missing
    parent, a file, a directory that is not empty) and BackupFailedError
    when writing fails (nothing left behind then).
    """
    parent_fd = open_parent(dest)
    try:
        check_last(parent_fd, dest)
        return _copy(env, reading, dest, journal, parent_fd)
    finally:
        os.close(parent_fd)


def _copy(
    env: lmdb.Environment,
    reading: Callable[[], contextlib.AbstractContextManager[None]],
    dest: Destination,
    journal: BackupJournal,
    parent_fd: int,
) -> BackupResult:
    parent = dest.path.parent
    try:
        partial = _make_partial(parent_fd, dest, journal)
    except OSError as error:
        raise BackupFailedError(f"cannot write in {str(parent)!r}: {error}") from error
    try:
        partial_fd = os.open(partial, DIRECTORY_FLAGS, dir_fd=parent_fd)
        try:
            data_fd = os.open(
                "data.mdb",
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=partial_fd,
            )
            try:
                with reading():
                    env.copyfd(data_fd, compact=True)
                os.fsync(data_fd)
                size = os.fstat(data_fd).st_size
            finally:
                os.close(data_fd)
            size = _mark_as_backup(partial_fd, size)
            os.fsync(partial_fd)
        finally:
            os.close(partial_fd)
        # Replaces an empty directory; fails on one filled meanwhile, or on a link.
        os.rename(partial, dest.parts[-1], src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        os.fsync(parent_fd)
    except BaseException as error:
        with contextlib.suppress(OSError):
            shutil.rmtree(partial, dir_fd=parent_fd)
        if not _exists(parent_fd, partial):
            with contextlib.suppress(OSError):
                journal.remove(parent / partial)
        if isinstance(error, (OSError, lmdb.Error)):
            raise BackupFailedError(f"backup to {str(dest.path)!r} failed: {error}") from error
        raise
    with contextlib.suppress(OSError):  # a stale entry only costs a look at the next start
        journal.remove(parent / partial)
    return BackupResult(dest.path, size)


def _mark_as_backup(partial_fd: int, size: int) -> int:
    """Record in the copy's ``meta`` that it is a backup; return its new size.

    The copy is opened through its directory's descriptor (``/proc/self/fd``),
    so a link swapped in meanwhile is not followed, without a lock file (no
    one else knows the partial directory) and committed with an fsync.
    """
    env = lmdb.open(
        f"/proc/self/fd/{partial_fd}",
        map_size=size + 1024 * 1024,
        max_dbs=len(schema.ALL_DATABASES),
        subdir=True,
        lock=False,
        sync=True,
        metasync=True,
        readahead=False,
    )
    try:
        with env.begin(write=True) as txn:
            meta = env.open_db(schema.META, txn=txn)
            txn.put(schema.META_RESTORED_BACKUP, schema.U64.pack(1), db=meta)
        env.sync(True)
    finally:
        env.close()
    return os.stat("data.mdb", dir_fd=partial_fd, follow_symlinks=False).st_size


def _exists(parent_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def _make_partial(parent_fd: int, dest: Destination, journal: BackupJournal) -> str:
    """Create the partial directory of a backup to ``dest``, recorded in the journal first.

    Returns its name in the parent directory (``parent_fd``). The name is
    chosen, journaled, then created exclusively (``mkdir`` fails on anything
    there, a link included); a name taken meanwhile is struck off and
    another one chosen.
    """
    parent = dest.path.parent
    for _ in range(100):
        name = f".{dest.parts[-1]}{PARTIAL_INFIX}{_random_suffix()}"
        journal.add(parent / name)
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            journal.remove(parent / name)
            continue
        except OSError:
            journal.remove(parent / name)
            raise
        return name
    raise FileExistsError(f"no free temporary name beside {str(dest.path)!r}")


def _random_suffix() -> str:
    return "".join(secrets.choice(_SUFFIX_CHARACTERS) for _ in range(8))
