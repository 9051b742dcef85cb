"""A server's memory and CPU time, and the machine's, read from ``/proc``.

``VmRSS`` is everything resident, including file pages the process has
mapped: for an LMDB daemon, the pages of the data file it has read through
its memory map (page cache, shared and reclaimable). ``RssAnon`` is only its
private heap and stacks: what grows if the daemon buffers data. Both are in
KiB, as the kernel reports them.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType
from typing import Final

from bench.common import Result

FIELDS: Final = ("VmRSS", "RssAnon", "RssFile")
SAMPLE_INTERVAL: Final = 0.020


def machine_busy_seconds() -> float:
    """CPU seconds all processors have spent busy since boot (``/proc/stat``)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait.
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or None once it has exited."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time the process has used, or None once it has exited."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU time of the process and all its descendants, live or exited; None once it exited.

    A server made of processes (PostgreSQL: a postmaster and one backend per
    connection) spends its CPU in children the postmaster forks. Each live
    process counts its own user and system time, plus that of the children
    it has reaped (``cutime``, ``cstime``), so a backend that exits between
    two readings is still counted. A process forked and reaped between two
    readings of another tree is missed only if its parent is not in the tree.
    """
    fields = _stat_fields(pid)
    if fields is None:
        return None
    children: dict[int, list[int]] = {}
    times: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        other = _stat_fields(int(entry))
        if other is None:
            continue
        # ppid is field 4 of the line (1 after the name); cutime, cstime 16, 17.
        children.setdefault(int(other[1]), []).append(int(entry))
        times[int(entry)] = sum(int(value) for value in other[11:15])
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        total += times.get(current, 0)
        pending.extend(children.get(current, []))
    return total / os.sysconf("SC_CLK_TCK")


def read_status(pid: int) -> dict[str, int]:
    """The :data:`FIELDS` of the process, in KiB; empty once it has exited."""
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                name, _, rest = line.partition(":")
                if name in FIELDS:
                    values[name] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return values


class PeakSampler:
    """Samples a process's memory every 20 ms in a thread; use as ``with``.

    On exit, :attr:`result` holds the memory ``before`` and ``after`` and
    the ``peak`` of each field over the samples, plus ``peak_increase_kib``
    (peak minus before) and the CPU seconds the process and its descendants
    used meanwhile (:func:`tree_cpu_seconds`; the daemon and redis-server
    have none, PostgreSQL's backends are the postmaster's children).
    """

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL) -> None:
        self.pid = pid
        self.interval = interval
        self.before: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.result: Result = {}
        self._cpu_before: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def _sample(self) -> None:
        for name, value in read_status(self.pid).items():
            self.peak[name] = max(self.peak.get(name, 0), value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakSampler:
        self.before = read_status(self.pid)
        self._cpu_before = tree_cpu_seconds(self.pid)
        self.peak = dict(self.before)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        after = read_status(self.pid)
        cpu_after = tree_cpu_seconds(self.pid)
        self.result = {
            "before_kib": self.before,
            "peak_kib": self.peak,
            "after_kib": after,
            "peak_increase_kib": {
                name: self.peak[name] - self.before[name]
                for name in self.peak
                if name in self.before
            },
            "cpu_s": None
            if cpu_after is None or self._cpu_before is None
            else cpu_after - self._cpu_before,
        }
