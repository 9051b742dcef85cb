"""The journal of partial backup directories, and removing those a killed daemon left.

A backup is copied into a hidden directory beside its destination,
``.NAME.partial-XXXXXXXX``, and renamed to the destination when complete
(:mod:`.backups`). A daemon killed during the copy cannot remove that
directory, so every partial directory is recorded, before it is created, in
a journal in the data directory (``backups-in-progress``, one absolute path
a line) and struck off once the backup is renamed or removed. At start
(:meth:`BackupJournal.clean`) the daemon removes what the journal still
lists: only directories it created itself, whose name has the partial
pattern, reached without links, never anything else.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Final

JOURNAL_NAME: Final = "backups-in-progress"
_PARTIAL_NAME: Final = re.compile(r"\..+\.partial-[a-z0-9_]{8}", re.DOTALL)


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
            fsync_path(self.path.parent)
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
        fsync_path(self.path.parent)

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


def fsync_path(path: Path) -> None:
    """fsync a file or a directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
