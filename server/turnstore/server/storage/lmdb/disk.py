"""Disk failures as engine errors: a full disk is StorageFullError, others DiskIOError.

LMDB reports a failed page write as a bare ``lmdb.Error`` whose message ends
with ``strerror(errno)``, and a short write (what a full filesystem often
gives: part of the pages fit) as EIO. So the message alone cannot tell a
full disk from a failing one: an I/O error counts as a full disk when the
filesystem holding the data directory has less than ``FULL_DISK_MARGIN``
bytes available to the daemon right after the failure.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Final

import lmdb

from turnstore.server.storage.errors import DiskIOError, EngineError, StorageFullError

# Less available space than this after a failed write means the disk is full.
FULL_DISK_MARGIN: Final = 16 << 20

_DISK_ERRNOS: Final = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)
_MESSAGES: Final = {os.strerror(number): number for number in _DISK_ERRNOS}


def disk_errno(error: BaseException) -> int | None:
    """The errno of a disk failure, from an OSError or an LMDB error; None otherwise."""
    if isinstance(error, OSError):
        return error.errno if error.errno in _DISK_ERRNOS else None
    if isinstance(error, (lmdb.DiskError, lmdb.PanicError)):
        # PanicError: a meta page write failed earlier; the environment is unusable.
        return errno.EIO
    if type(error) is lmdb.Error:
        message = str(error.args[0]) if error.args else ""
        for text, number in _MESSAGES.items():
            if message.endswith(text):
                return number
    return None


def available_bytes(path: Path) -> int | None:
    """Bytes the daemon may still write on the filesystem of ``path``; None if unknown."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def as_engine_error(error: BaseException, data_dir: Path, what: str) -> EngineError | None:
    """The engine error a disk failure while doing ``what`` stands for; None if not one.

    ENOSPC, EDQUOT and EFBIG are a full disk; EIO is one when less than
    ``FULL_DISK_MARGIN`` is available (see the module), else a failing disk.
    """
    number = disk_errno(error)
    if number is None:
        return None
    free = available_bytes(data_dir)
    if number != errno.EIO or (free is not None and free < FULL_DISK_MARGIN):
        shown = "unknown" if free is None else str(free)
        return StorageFullError(
            f"{what} failed: the disk holding the data directory is full "
            f"({shown} bytes available); nothing was written ({error})"
        )
    return DiskIOError(f"{what} failed: the disk reported an error; nothing was written ({error})")
