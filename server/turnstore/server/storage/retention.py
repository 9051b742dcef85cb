"""Retention bookkeeping both engines share: the sweep's counters, its one-at-a-time guard,
its background driver, and the sizes of its reads and removal batches.

Each engine finds expired threads and conversation keys in its own storage
and removes each one in a write that checks its age again (so one written
after the sweep found it is kept); what surrounds that is the same for both
and lives here.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from turnstore.server.storage.errors import EngineClosedError
from turnstore.server.storage.values import RetentionStats

# Entries a sweep examines per read transaction, and at most this many
# threads or keys per removal batch, so that a batch is one short write
# that appends interleave with.
RETENTION_SCAN_PAGE = 1000
RETENTION_BATCH_ITEMS = 64


@dataclass
class RetentionState:
    """An engine's retention bookkeeping; counters are guarded by ``lock``."""

    stop: threading.Event = field(default_factory=threading.Event)
    sweep_lock: threading.Lock = field(default_factory=threading.Lock)
    lock: threading.Lock = field(default_factory=threading.Lock)
    sweeps: int = 0
    removed_threads: int = 0
    removed_events: int = 0
    removed_conversations: int = 0
    last_sweep_ns: int = 0
    last_error: str | None = None

    def stats(self, enabled: bool) -> RetentionStats:
        """What the sweeps did so far, read under the lock."""
        with self.lock:
            return RetentionStats(
                enabled=enabled,
                sweeps=self.sweeps,
                removed_threads=self.removed_threads,
                removed_events=self.removed_events,
                removed_conversations=self.removed_conversations,
                last_sweep_ns=self.last_sweep_ns,
                last_error=self.last_error,
            )

    @contextlib.contextmanager
    def sweeping(self, now_ns: int, is_closed: Callable[[], bool]) -> Iterator[None]:
        """Around one sweep: one at a time, none once closed, its outcome counted.

        EngineClosedError when ``is_closed()``; an error the sweep raises is
        kept in ``last_error`` and raised on; a sweep that ends counts.
        """
        with self.sweep_lock:
            if is_closed():
                raise EngineClosedError("the engine is closed")
            try:
                yield
            except BaseException as error:
                with self.lock:
                    self.last_error = f"{type(error).__name__}: {error}"
                raise
            with self.lock:
                self.sweeps += 1
                self.last_sweep_ns = now_ns
                self.last_error = None

    def remove_batch(
        self,
        threads: bool,
        keys: Sequence[str],
        remove: Callable[[str], Future[int | None]],
    ) -> tuple[int, int]:
        """Submit one removal per key, wait for all, count them; (removed, weight).

        All are submitted before any is waited for, so the writer can commit
        the batch together. ``remove`` resolves to the removed entry's weight
        (a thread's events; for a key, its snapshot versions, counted as
        removed conversations only), or None when the entry was kept or gone.
        A removal that fails raises here, and its batch is not counted.
        """
        futures = [remove(key) for key in keys]
        done = [
            outcome for outcome in (future.result() for future in futures) if outcome is not None
        ]
        weight = sum(done)
        with self.lock:
            if threads:
                self.removed_threads += len(done)
                self.removed_events += weight
            else:
                self.removed_conversations += len(done)
        return len(done), weight

    def run(self, interval_seconds: float, sweep: Callable[[], object]) -> None:
        """The background driver: one ``sweep`` per interval until ``stop`` is set.

        Ends at EngineClosedError; any other failure is kept by the sweep in
        ``last_error`` and retried at the next interval.
        """
        while not self.stop.wait(interval_seconds):
            try:
                sweep()
            except EngineClosedError:
                return
            except Exception:  # kept in last_error; retried next time
                continue
