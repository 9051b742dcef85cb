"""Space accounting: how much of the size ceiling the database uses, and the reserve.

Writes that add data (appends, finishes, saves) are admitted only while the
pages in use plus an estimate of the write stay below the ceiling minus a
reserve. Writes that remove data (clear, snapshot delete, retention) are
never refused here, so they always find the reserve to run in.

Why a reserve is needed at all: LMDB copies every page it changes (copy on
write), and a page freed by a transaction becomes reusable only two
transactions later (the previous snapshot may still reference it). A delete
therefore needs fresh pages before it frees any: one per touched page on
each tree level, and at its commit one record of every page it freed (8
bytes per page, written as one run of contiguous pages). Measured with the
engine on LMDB 0.9.36: clearing a thread of 40-210 MiB needs 0.25-0.35% of
what it frees (about 1/512 for the free-page record, plus copied pages) on
top of what it finds free, a small thread at most 64 KiB
(docs/operations.md has the table). The default reserve, 1% of the ceiling
and at least 1 MiB, holds a clear of everything with room to spare. (The
pages a clear frees wait for the next commit: see
``writer.Writer._release_freed_pages``.)

"In use" is the sum of every database's branch, leaf and overflow pages
(``mdb_stat``, constant time; about 8 microseconds for all of them) plus the
two meta pages. LMDB's own free list is not counted as in use: its pages
are free for the next transactions. Below ``MEASURE_FROM`` of the limit no
measurement is taken at all; admission adds a generous estimate to the last
measurement instead, and measures again once that estimate nears the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import lmdb

from turnstore.server.storage.errors import StorageFullError
from turnstore.server.storage.values import SpaceUsage

# Usage levels (fractions of the write limit) warned about once per upward crossing.
WARN_LEVELS: Final = (0.8, 0.9)
# Admission measures exactly once its running estimate passes this fraction of
# the write limit (below the first warning level).
MEASURE_FROM: Final = 0.75
# A value larger than this goes to overflow pages of its own (4 KiB pages).
_LARGEST_INLINE_VALUE: Final = 2000
# Bytes per stored event outside its record: keys and node headers of the
# events, turn_events and event_ids entries, branch entries.
_EVENT_OVERHEAD: Final = 160
_PAGE_BYTES: Final = 4096

LevelListener = Callable[[SpaceUsage, float | None, float | None], None]


def default_reserve(max_bytes: int) -> int:
    """1% of the ceiling, at least 1 MiB, at most a quarter of the ceiling."""
    return min(max(1 << 20, max_bytes // 100), max_bytes // 4)


def estimate_events_bytes(count: int, total_bytes: int, max_id_bytes: int) -> int:
    """An upper bound of the bytes ``count`` events of ``total_bytes`` (ids and envelopes) take.

    Each event is bounded twice: a small value shares leaf pages, which a
    B-tree keeps at least half full, so at most twice its size and its index
    entries; a large one takes its own overflow pages, at most its size and
    one page, plus index entries. Both sums are upper bounds, so the smaller
    one is too.
    """
    shared = 2 * (total_bytes + count * _EVENT_OVERHEAD)
    own_pages = total_bytes + count * (_PAGE_BYTES + 2 * _EVENT_OVERHEAD + max_id_bytes)
    return min(shared, own_pages)


def estimate_value_bytes(value_length: int) -> int:
    """An upper bound of the bytes one stored value of this length takes."""
    return value_length + 4096 if value_length > _LARGEST_INLINE_VALUE else 2 * value_length + 64


class SpaceGuard:
    """Admits writes that add data while the database stays below its write limit.

    Used by the engine's writer thread (:meth:`admit`, :meth:`note_freed`)
    and by readers (:meth:`usage`). ``on_level`` is called, on the writer
    thread, whenever a measurement crosses one of ``WARN_LEVELS``: with the
    usage, the level crossed upward (or None) and, when usage fell, the
    lowest level it is now below (or None). It must be quick.
    """

    def __init__(
        self,
        dbs: Sequence[Any],
        page_size: int,
        max_bytes: int,
        reserve_bytes: int,
    ) -> None:
        if not 0 <= reserve_bytes < max_bytes:
            raise ValueError("the reserve must be smaller than the ceiling")
        self._dbs = list(dbs)
        self._page_size = page_size
        self.max_bytes = max_bytes
        self.reserve_bytes = reserve_bytes
        self.write_limit_bytes = max_bytes - reserve_bytes
        self._measure_from = int(self.write_limit_bytes * MEASURE_FROM)
        # Writer-thread state: the last measurement plus estimates admitted since.
        self._estimated_used = 0
        self._stale = True
        self._freed_recently = False
        self._level = 0  # how many WARN_LEVELS the last measurement was at or above
        self._listeners: list[LevelListener] = []

    def add_level_listener(self, listener: LevelListener) -> None:
        """Call ``listener`` whenever usage crosses a warning level (see the class)."""
        self._listeners.append(listener)

    def measure(self, txn: lmdb.Transaction) -> int:
        """Bytes of pages in use as ``txn`` sees them (a write transaction's own changes too)."""
        pages = 2  # the meta pages
        for db in self._dbs:
            stat = txn.stat(db)
            pages += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        return pages * self._page_size

    def usage(self, txn: lmdb.Transaction) -> SpaceUsage:
        """The usage as ``txn`` sees it."""
        return SpaceUsage(self.measure(txn), self.max_bytes, self.write_limit_bytes)

    def admit(self, txn: lmdb.Transaction, estimate: int) -> None:
        """Raise StorageFullError unless a write of about ``estimate`` bytes fits.

        Call it in the write transaction, before the write changes anything.
        A write is refused only on an exact measurement, never on an
        estimate.
        """
        if self._stale or self._estimated_used + estimate > self._measure_from:
            self._record(self.measure(txn))
        if self._estimated_used + estimate > self.write_limit_bytes:
            raise StorageFullError(
                f"the database is at its size ceiling: {self._estimated_used} bytes in use, "
                f"writes that add data stop at {self.write_limit_bytes} "
                f"(--max-db-size {self.max_bytes} minus a reserve of {self.reserve_bytes} "
                f"bytes for deletes); clear threads, delete snapshots or let retention "
                f"remove some; nothing was written"
            )
        self._estimated_used += estimate

    def note_freed(self) -> None:
        """Data was removed: the next admission measures again."""
        self._stale = True
        self._freed_recently = True

    def take_freed_recently(self) -> bool:
        """Whether data was removed since the last call (then clear the mark)."""
        freed, self._freed_recently = self._freed_recently, False
        return freed

    def _record(self, used: int) -> None:
        self._estimated_used = used
        self._stale = False
        level = sum(1 for fraction in WARN_LEVELS if used >= fraction * self.write_limit_bytes)
        if level == self._level:
            return
        previous, self._level = self._level, level
        usage = SpaceUsage(used, self.max_bytes, self.write_limit_bytes)
        crossed = WARN_LEVELS[level - 1] if level > previous else None
        fell_below = WARN_LEVELS[level] if level < previous else None
        for listener in self._listeners:
            try:
                listener(usage, crossed, fell_below)
            except Exception:  # a listener's failure must not fail the write
                continue
