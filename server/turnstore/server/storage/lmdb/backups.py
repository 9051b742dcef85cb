"""Backups: the destination's checks, the atomic copy, and leftovers of killed ones.

Backups are written only inside the directory the operator named with
``turnstore serve --backup-dir`` (``EngineConfig.backup_dir``); without it
every backup is refused. A requested destination is a path below that
directory (an absolute one must lie inside it); ``..`` is refused outright,
and so is a symbolic link anywhere below the backup directory: each
component is opened relative to the one before with ``O_NOFOLLOW``, the
copy is created with exclusive creation (``mkdir``, ``O_EXCL``) relative to
those descriptors, and renamed relative to them too, so a link swapped in
meanwhile is never followed. The backup directory itself is the
operator's, and may be reached through links.

A backup is copied into a hidden directory beside its destination,
``.NAME.partial-XXXXXXXX``, and renamed to the destination when complete.
A daemon killed during the copy cannot remove that directory, so every
partial directory is recorded, before it is created, in a journal in the
data directory (``backups-in-progress``, one absolute path a line) and
struck off once the backup is renamed or removed. At start
(:meth:`BackupJournal.clean`) the daemon removes what the journal still
lists: only directories it created itself, whose name has the partial
pattern, reached without links, never anything else.

A finished copy is marked as a backup (``restored_backup`` in its ``meta``):
the first daemon to open it draws new thread epochs, so a reader's cursor
from the database's later life is answered "cleared", never resumed at a
position that now holds other events.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import lmdb

from turnstore.server.storage.errors import BackupFailedError, InvalidArgumentError
from turnstore.server.storage.lmdb import schema
from turnstore.server.storage.values import BackupResult

JOURNAL_NAME: Final = "backups-in-progress"
PARTIAL_INFIX: Final = ".partial-"
BACKUPS_DISABLED: Final = (
    "backups are disabled: start the daemon with --backup-dir DIR to allow backups inside DIR"
)
# Partial directories end in 8 random characters of this set.
_SUFFIX_CHARACTERS: Final = "abcdefghijklmnopqrstuvwxyz0123456789_"
_PARTIAL_NAME: Final = re.compile(r"\..+\.partial-[a-z0-9_]{8}", re.DOTALL)
# The partial directory's name is the destination's name and these many bytes.
_PARTIAL_EXTRA_BYTES: Final = 1 + len(PARTIAL_INFIX) + 8
_DEFAULT_NAME_MAX: Final = 255
_DEFAULT_PATH_MAX: Final = 4096
# A directory below the backup directory, opened without following a link.
_DIRECTORY_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Destination:
    """A backup's destination: the backup directory and the components below it."""

    backup_dir: Path
    parts: tuple[str, ...]

    @property
    def path(self) -> Path:
        """The destination's absolute path (as reported back)."""
        return self.backup_dir.joinpath(*self.parts)


def check_backup_dir(backup_dir: Path, data_dir: Path) -> Path:
    """The backup directory resolved, or raise ValueError (the daemon does not start).

    It must be an existing directory, neither the data directory nor inside
    it (a backup there could take the journal's name), nor above it.
    """
    resolved = backup_dir.resolve()
    if not resolved.is_dir():
        raise ValueError(f"--backup-dir {str(backup_dir)!r} is not an existing directory")
    data = data_dir.resolve()
    if resolved == data or data in resolved.parents or resolved in data.parents:
        raise ValueError(
            f"--backup-dir {str(backup_dir)!r} must not be the data directory "
            f"{str(data)!r}, inside it or above it"
        )
    return resolved


def check_destination(dest_dir: str, backup_dir: Path | None) -> Destination:
    """The destination ``dest_dir`` names below ``backup_dir``, or raise saying what is wrong.

    Raises BackupFailedError when backups are disabled (``backup_dir`` None),
    InvalidArgumentError for a path that is empty, holds a NUL byte or a
    ``..`` component, is absolute but outside ``backup_dir``, is the backup
    directory itself, or is over PATH_MAX or NAME_MAX (the last component
    with room for the partial directory's name). What exists on disk (links,
    an existing destination, a missing parent) is checked by
    :func:`write_backup`, relative to open directories.
    """
    if backup_dir is None:
        raise BackupFailedError(BACKUPS_DISABLED)
    if not dest_dir:
        raise InvalidArgumentError("dest_dir", "is empty; name a directory inside --backup-dir")
    if "\0" in dest_dir:
        raise InvalidArgumentError("dest_dir", f"{dest_dir!r} holds a NUL byte")
    if ".." in dest_dir.split("/"):
        raise InvalidArgumentError(
            "dest_dir", f"{dest_dir!r} has a '..' component; name a directory inside --backup-dir"
        )
    requested = Path(os.path.normpath(dest_dir))
    if requested.is_absolute():
        if requested != backup_dir and backup_dir not in requested.parents:
            raise InvalidArgumentError(
                "dest_dir",
                f"{dest_dir!r} is outside the backup directory {str(backup_dir)!r}",
            )
        requested = requested.relative_to(backup_dir)
    parts = tuple(part for part in requested.parts if part not in ("", "."))
    if not parts:
        raise InvalidArgumentError(
            "dest_dir", "is the backup directory itself; name a directory inside it"
        )
    dest = Destination(backup_dir, parts)
    encoded = os.fsencode(dest.path)
    if len(encoded) >= _DEFAULT_PATH_MAX:
        raise InvalidArgumentError(
            "dest_dir", f"is {len(encoded)} bytes, over the path limit of {_DEFAULT_PATH_MAX - 1}"
        )
    name_max = _name_max(backup_dir)
    for part in parts:
        if len(os.fsencode(part)) > name_max:
            raise InvalidArgumentError(
                "dest_dir",
                f"has a component of {len(os.fsencode(part))} bytes, over the "
                f"file system's limit of {name_max}",
            )
    name_limit = name_max - _PARTIAL_EXTRA_BYTES
    if len(os.fsencode(parts[-1])) > name_limit:
        raise InvalidArgumentError(
            "dest_dir",
            f"its last component is {len(os.fsencode(parts[-1]))} bytes, over the limit of "
            f"{name_limit} (the file system's {name_max} less room for the temporary name)",
        )
    return dest


def _name_max(directory: Path) -> int:
    """NAME_MAX of ``directory`` (255 if unknown)."""
    with contextlib.suppress(OSError, ValueError):
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    return _DEFAULT_NAME_MAX


def _open_parent(dest: Destination) -> int:
    """A descriptor of the destination's parent, reached below the backup directory without links.

    Raises BackupFailedError when the backup directory cannot be opened and
    InvalidArgumentError for a component that is a link, missing, not a
    directory or not readable. The caller closes the descriptor.
    """
    try:
        fd = os.open(dest.backup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise BackupFailedError(
            f"the backup directory {str(dest.backup_dir)!r} cannot be opened: {error}"
        ) from error
    reached = dest.backup_dir
    for part in dest.parts[:-1]:
        reached = reached / part
        try:
            below = os.open(part, _DIRECTORY_FLAGS, dir_fd=fd)
        except OSError as error:
            problem = _why_not_a_directory(fd, part, reached, error)
            os.close(fd)
            raise InvalidArgumentError("dest_dir", problem) from None
        os.close(fd)
        fd = below
    return fd


def _why_not_a_directory(parent_fd: int, name: str, path: Path, error: OSError) -> str:
    with contextlib.suppress(OSError):
        if stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
            return f"{str(path)!r} is a symbolic link; backups never follow links"
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        return f"the parent directory {str(path)!r} does not exist"
    return f"{str(path)!r} cannot be used: {error.strerror}"


def _check_last(parent_fd: int, dest: Destination) -> None:
    """Raise InvalidArgumentError unless the destination is missing or an empty directory."""
    name, path = dest.parts[-1], str(dest.path)
    try:
        mode = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise InvalidArgumentError("dest_dir", f"{path!r} cannot be used: {error}") from None
    if stat.S_ISLNK(mode):
        raise InvalidArgumentError(
            "dest_dir", f"{path!r} is a symbolic link; backups never follow links"
        )
    if not stat.S_ISDIR(mode):
        raise InvalidArgumentError("dest_dir", f"{path!r} exists and is not a directory")
    try:
        fd = os.open(name, _DIRECTORY_FLAGS, dir_fd=parent_fd)
    except OSError as error:
        raise InvalidArgumentError("dest_dir", f"{path!r} cannot be used: {error}") from None
    try:
        with os.scandir(fd) as entries:
            if any(True for _ in entries):
                raise InvalidArgumentError("dest_dir", f"{path!r} is a directory that is not empty")
    finally:
        os.close(fd)


class BackupJournal:
    """The partial backup directories of this data directory not yet renamed or removed.

    Safe to use from several threads (concurrent backups).
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / JOURNAL_NAME
        self._lock = threading.Lock()

    def _read(self) -> list[str]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            return []
        return [line for line in text.split("\n") if line]

    def _write(self, entries: list[str]) -> None:
        """Replace the journal atomically (a new file, fsynced, renamed)."""
        if not entries:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            _fsync(self.path.parent)
            return
        temporary = self.path.with_name(self.path.name + ".new")
        text = "".join(f"{entry}\n" for entry in entries)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode("utf-8", "surrogateescape"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        _fsync(self.path.parent)

    def add(self, partial: Path) -> None:
        """Record a partial directory about to be created (durably, before it exists)."""
        with self._lock:
            self._write([*self._read(), str(partial)])

    def remove(self, partial: Path) -> None:
        """Strike off a partial directory that was renamed or removed."""
        with self._lock:
            self._write([entry for entry in self._read() if entry != str(partial)])

    def clean(self) -> tuple[list[Path], list[str]]:
        """Remove every partial directory the journal lists.

        Returns the directories removed and, for those that could not be,
        why. Run at start, before any backup. An entry whose name lacks the
        partial pattern, that is not a directory (a symlink, say), or whose
        path now passes through a link, is dropped without touching it; one
        that cannot be removed stays listed for the next start.
        """
        with self._lock:
            removed: list[Path] = []
            kept: list[str] = []
            problems: list[str] = []
            for entry in self._read():
                partial = Path(entry)
                if not partial.is_absolute() or not _PARTIAL_NAME.fullmatch(partial.name):
                    continue
                if partial.is_symlink() or not partial.is_dir():
                    continue
                if os.path.realpath(partial) != entry:  # reached through a link now
                    continue
                try:
                    shutil.rmtree(partial)
                except OSError as error:
                    problems.append(f"{entry}: {error}")
                    kept.append(entry)
                    continue
                removed.append(partial)
            self._write(kept)
            return removed, problems


def write_backup(
    env: lmdb.Environment,
    reading: Callable[[], contextlib.AbstractContextManager[None]],
    dest: Destination,
    journal: BackupJournal,
) -> BackupResult:
    """Copy ``env`` compacted into ``dest`` (from :func:`check_destination`).

    ``reading`` guards the copy's read transaction (the map must not be
    resized under it). Every directory below the backup directory is opened
    without following links; the copy goes to a partial directory recorded
    in ``journal`` and created exclusively, which is renamed to ``dest``
    when complete or removed when anything fails. Raises
    InvalidArgumentError for an unusable destination (a link, a missing
    parent, a file, a directory that is not empty) and BackupFailedError
    when writing fails (nothing left behind then).
    """
    parent_fd = _open_parent(dest)
    try:
        _check_last(parent_fd, dest)
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
        partial_fd = os.open(partial, _DIRECTORY_FLAGS, dir_fd=parent_fd)
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


def _fsync(path: Path) -> None:
    """fsync a file or a directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
