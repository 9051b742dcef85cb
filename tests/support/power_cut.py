"""A simulated power cut for a daemon: every write not covered by a sync is lost.

:func:`build_shim` compiles ``power_cut_shim.c`` (an LD_PRELOAD library that logs
an undo record before each unsynced write to a file of the data directory, and a
marker at each sync); :func:`cut_power` applies the records the syncs left, newest
first, after the process was SIGKILLed (the page cache survives that, so the log is
whole): the files are left exactly as synced. :class:`PowerCutDaemon` is a
:class:`~tests.support.daemon.Daemon` whose :meth:`~PowerCutDaemon.kill` is a
power cut (for :class:`tests.test_crash.CrashLoop`).
"""

from __future__ import annotations

import os
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.daemon import Daemon

SHIM_SOURCE = Path(__file__).with_name("power_cut_shim.c")


def build_shim(directory: Path) -> Path:
    """Compile the shim into ``directory``; raises (never skips) when gcc fails."""
    library = directory / "power_cut_shim.so"
    result = subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-O1",
            "-Wall",
            "-Werror",
            "-o",
            str(library),
            str(SHIM_SOURCE),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"cannot build the power-cut shim: {result.stderr}"
    return library


@dataclass
class Undo:
    """One write to take back: the bytes it overwrote and the file's size before it."""

    index: int
    path: str
    offset: int
    old_size: int
    old_bytes: bytes


@dataclass
class CutReport:
    """What one power cut took back."""

    undone: list[Undo] = field(default_factory=list)
    # Writes the log recorded, and how many of them a sync made durable.
    recorded: int = 0
    synced: int = 0

    def undone_in(self, name: str) -> list[Undo]:
        return [undo for undo in self.undone if os.path.basename(undo.path) == name]


def read_log(log: Path) -> CutReport:
    """The writes of ``log`` that no sync covered, oldest first."""
    data = log.read_bytes() if log.exists() else b""
    pending: dict[str, list[Undo]] = {}
    report = CutReport()
    offset = 0
    index = 0
    while offset < len(data):
        # A record cut short by the SIGKILL is the last one, and its write (or the
        # sync's marker) never happened: it is logged in full first.
        kind = data[offset : offset + 1]
        if offset + 5 > len(data):
            break
        (path_len,) = struct.unpack_from("<I", data, offset + 1)
        path = data[offset + 5 : offset + 5 + path_len].decode(errors="replace")
        offset += 5 + path_len
        if kind == b"U":
            if offset + 24 > len(data):
                break
            at, old_size, have = struct.unpack_from("<qqq", data, offset)
            offset += 24
            if offset + have > len(data):
                break
            old = data[offset : offset + have]
            offset += have
            pending.setdefault(path, []).append(Undo(index, path, at, old_size, old))
            index += 1
        elif kind == b"S":
            if offset + 8 > len(data):
                break
            (upto,) = struct.unpack_from("<Q", data, offset)
            offset += 8
            kept = [undo for undo in pending.get(path, []) if undo.index >= upto]
            report.synced += len(pending.get(path, [])) - len(kept)
            pending[path] = kept
        else:
            raise AssertionError(f"a corrupt undo log {log} at byte {offset}")
    report.recorded = index
    report.undone = sorted((u for undos in pending.values() for u in undos), key=lambda u: u.index)
    return report


def cut_power(log: Path) -> CutReport:
    """Undo every unsynced write of ``log`` (the process that wrote it must be dead)."""
    report = read_log(log)
    for undo in reversed(report.undone):
        try:
            fd = os.open(undo.path, os.O_RDWR)
        except FileNotFoundError:
            continue  # a file renamed or removed later; its data was synced before
        try:
            if undo.old_bytes:
                os.pwrite(fd, undo.old_bytes, undo.offset)
            os.ftruncate(fd, undo.old_size)
        finally:
            os.close(fd)
    log.rename(log.with_suffix(".applied"))
    return report


class PowerCutDaemon(Daemon):
    """A daemon run under the shim, whose :meth:`kill` is a power cut.

    Each start logs to a new undo log in ``work_dir``; :attr:`cuts` has what
    each cut took back, :attr:`replayed` the redo records each start replayed.
    """

    def __init__(
        self, data_dir: Path, shim: Path, work_dir: Path, extra_args: list[str] | None = None
    ) -> None:
        super().__init__(data_dir, extra_args=extra_args)
        self.shim = shim
        self.work_dir = work_dir
        self.use_shim = True
        self.cuts: list[CutReport] = []
        self.replayed: list[int] = []
        self._log: Path | None = None

    def start(self) -> dict[str, object]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = None
        self.extra_env = {}
        if self.use_shim:
            self._log = self.work_dir / f"undo-{len(self.cuts)}-{len(self.replayed)}.log"
            self.extra_env = {
                "LD_PRELOAD": str(self.shim),
                "POWER_CUT_DIR": str(self.data_dir),
                "POWER_CUT_LOG": str(self._log),
            }
        serving = super().start()
        self.replayed.append(int(serving.get("redo_journal_replayed_commits", 0)))
        return serving

    def kill(self) -> int:
        status = super().kill()
        assert self._log is not None, "a power cut needs the shim"
        self.cuts.append(cut_power(self._log))
        return status
