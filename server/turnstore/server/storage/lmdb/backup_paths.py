"""Where a backup may go: the backup directory's checks at start, a requested destination's
checks, and the destination's parent opened without following links.

Backups are written only inside the directory the operator named with
``turnstore serve --backup-dir`` (``EngineConfig.backup_dir``); without it
every backup is refused. A requested destination is a path below that
directory (an absolute one must lie inside it); ``..`` is refused outright,
and so is a symbolic link anywhere below the backup directory: each
component is opened relative to the one before with ``O_NOFOLLOW``, and the
copy (:mod:`.backups`) is created and renamed relative to those descriptors,
so a link swapped in meanwhile is never followed. The backup directory
itself is the operator's, and may be reached through links.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from turnstore.server.storage.errors import BackupFailedError, InvalidArgumentError

BACKUPS_DISABLED: Final = (
    "backups are disabled: start the daemon with --backup-dir DIR to allow backups inside DIR"
)
PARTIAL_INFIX: Final = ".partial-"
# The partial directory's name is the destination's name and these many bytes.
_PARTIAL_EXTRA_BYTES: Final = 1 + len(PARTIAL_INFIX) + 8
_DEFAULT_NAME_MAX: Final = 255
_DEFAULT_PATH_MAX: Final = 4096
# A directory below the backup directory, opened without following a link.
DIRECTORY_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
    :func:`.backups.write_backup`, relative to open directories.
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


def open_parent(dest: Destination) -> int:
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
            below = os.open(part, DIRECTORY_FLAGS, dir_fd=fd)
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


def check_last(parent_fd: int, dest: Destination) -> None:
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
        fd = os.open(name, DIRECTORY_FLAGS, dir_fd=parent_fd)
    except OSError as error:
        raise InvalidArgumentError("dest_dir", f"{path!r} cannot be used: {error}") from None
    try:
        with os.scandir(fd) as entries:
            if any(True for _ in entries):
                raise InvalidArgumentError("dest_dir", f"{path!r} is a directory that is not empty")
    finally:
        os.close(fd)
