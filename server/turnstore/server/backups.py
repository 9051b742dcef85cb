"""Backups: the destination's checks, the atomic copy, and leftovers of killed ones.

A backup is copied into a hidden directory beside its destination,
``.NAME.partial-XXXXXXXX`` (``tempfile.mkdtemp``), and renamed to the
destination when complete. A daemon killed during the copy cannot remove
that directory, so every partial directory is recorded, before it is
created, in a journal in the data directory (``backups-in-progress``, one
absolute path a line) and struck off once the backup is renamed or removed.
At start (:meth:`BackupJournal.clean`) the daemon removes what the journal
still lists: only directories it created itself, whose name has the partial
pattern, never anything else.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

import lmdb

from turnstore.server.errors import BackupFailedError, InvalidArgumentError
from turnstore.server.values import BackupResult

JOURNAL_NAME: Final = "backups-in-progress"
PARTIAL_INFIX: Final = ".partial-"
# Partial directories end in 8 random characters of this set (mkdtemp's).
_SUFFIX_CHARACTERS: Final = "abcdefghijklmnopqrstuvwxyz0123456789_"
_PARTIAL_NAME: Final = re.compile(r"\..+\.partial-[a-z0-9_]{8}", re.DOTALL)
# The partial directory's name is the destination's name and these many bytes.
_PARTIAL_EXTRA_BYTES: Final = 1 + len(PARTIAL_INFIX) + 8
_DEFAULT_NAME_MAX: Final = 255
_DEFAULT_PATH_MAX: Final = 4096


def check_destination(dest_dir: str) -> Path:
    """The normalized destination, or raise InvalidArgumentError saying what is wrong.

    Acceptable: an absolute path of at most PATH_MAX bytes whose components
    fit NAME_MAX (the last one with room for the partial directory's name),
    that does not exist or is an empty directory, in an existing directory.
    """
    if "\0" in dest_dir or not os.path.isabs(dest_dir):
        raise InvalidArgumentError(
            "dest_dir", f"{dest_dir!r} is not an absolute path on the daemon's host"
        )
    dest = Path(os.path.normpath(dest_dir))
    if dest.parent == dest:
        raise InvalidArgumentError("dest_dir", "must not be the root directory")
    encoded = os.fsencode(dest)
    if len(encoded) >= _DEFAULT_PATH_MAX:
        raise InvalidArgumentError(
            "dest_dir", f"is {len(encoded)} bytes, over the path limit of {_DEFAULT_PATH_MAX - 1}"
        )
    name_max = _name_max(dest)
    for part in dest.parts[1:]:
        if len(os.fsencode(part)) > name_max:
            raise InvalidArgumentError(
                "dest_dir",
                f"has a component of {len(os.fsencode(part))} bytes, over the "
                f"file system's limit of {name_max}",
            )
    name_limit = name_max - _PARTIAL_EXTRA_BYTES
    if len(os.fsencode(dest.name)) > name_limit:
        raise InvalidArgumentError(
            "dest_dir",
            f"its last component is {len(os.fsencode(dest.name))} bytes, over the limit of "
            f"{name_limit} (the file system's {name_max} less room for the temporary name)",
        )
    try:
        if dest.exists() or dest.is_symlink():
            if dest.is_symlink() or not dest.is_dir():
                raise InvalidArgumentError(
                    "dest_dir", f"{str(dest)!r} exists and is not a directory"
                )
            if any(dest.iterdir()):
                raise InvalidArgumentError(
                    "dest_dir", f"{str(dest)!r} is a directory that is not empty"
                )
        if not dest.parent.is_dir():
            raise InvalidArgumentError(
                "dest_dir", f"the parent directory {str(dest.parent)!r} does not exist"
            )
    except OSError as error:  # e.g. a component that is a file, no permission to look
        raise InvalidArgumentError("dest_dir", f"{str(dest)!r} cannot be used: {error}") from None
    return dest


def _name_max(dest: Path) -> int:
    """NAME_MAX of the nearest existing directory above ``dest`` (255 if unknown)."""
    for directory in dest.parents:
        with contextlib.suppress(OSError, ValueError):
            return int(os.pathconf(directory, "PC_NAME_MAX"))
    return _DEFAULT_NAME_MAX


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
        partial pattern, or that is not a directory (a symlink, say), is
        dropped without touching it; one that cannot be removed stays listed
        for the next start.
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
    dest: Path,
    journal: BackupJournal,
) -> BackupResult:
    """Copy ``env`` compacted into ``dest`` (checked by :func:`check_destination`).

    ``reading`` guards the copy's read transaction (the map must not be
    resized under it). The copy goes to a partial directory recorded in
    ``journal``, which is renamed to ``dest`` when complete or removed when
    anything fails. Raises BackupFailedError (nothing left behind then).
    """
    try:
        partial = _make_partial(dest, journal)
    except OSError as error:
        raise BackupFailedError(f"cannot write in {str(dest.parent)!r}: {error}") from error
    try:
        with reading():
            env.copy(str(partial), compact=True)
        data_file = partial / "data.mdb"
        os.chmod(data_file, 0o600)
        size = data_file.stat().st_size
        _fsync(data_file)
        _fsync(partial)
        # Replaces an empty directory, fails on one that was filled meanwhile.
        partial.rename(dest)
        _fsync(dest.parent)
    except BaseException as error:
        shutil.rmtree(partial, ignore_errors=True)
        if not partial.exists():
            with contextlib.suppress(OSError):
                journal.remove(partial)
        if isinstance(error, (OSError, lmdb.Error)):
            raise BackupFailedError(f"backup to {str(dest)!r} failed: {error}") from error
        raise
    with contextlib.suppress(OSError):  # a stale entry only costs a look at the next start
        journal.remove(partial)
    return BackupResult(dest, size)


def _make_partial(dest: Path, journal: BackupJournal) -> Path:
    """Create the partial directory of a backup to ``dest``, recorded in the journal first.

    The name is chosen, journaled, then created; a name taken meanwhile is
    struck off and another one chosen.
    """
    for _ in range(100):
        candidate = dest.parent / f".{dest.name}{PARTIAL_INFIX}{_random_suffix()}"
        journal.add(candidate)
        try:
            candidate.mkdir(mode=0o700)
        except FileExistsError:
            journal.remove(candidate)
            continue
        except OSError:
            journal.remove(candidate)
            raise
        return candidate
    raise FileExistsError(f"no free temporary name beside {str(dest)!r}")


def _random_suffix() -> str:
    return "".join(secrets.choice(_SUFFIX_CHARACTERS) for _ in range(8))


def _fsync(path: Path) -> None:
    """fsync a file or a directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
