"""The registry of replay streams waiting for commits on a thread.

A follower holds one :class:`asyncio.Event` per stream, never a buffer: a
commit only sets the events of the followers of the changed threads, and each
follower then reads what is new from storage at its own pace. So a slow or
stalled follower costs the daemon nothing but its registration.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator


class Followers:
    """Followers of threads, woken by the engine's commit listener.

    Create it on the event loop that serves the followers; ``notify`` may be
    called from any thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._by_thread: dict[str, set[asyncio.Event]] = {}
        self._closing = False
        self.open_replays = 0
        self.waiting = 0

    @property
    def registered(self) -> int:
        """How many wake-up events are registered, over all threads."""
        return sum(len(events) for events in self._by_thread.values())

    @property
    def closing(self) -> bool:
        """True once :meth:`close` was called: followers should end."""
        return self._closing

    @contextlib.contextmanager
    def replay(self, thread_id: str, follow: bool) -> Iterator[asyncio.Event | None]:
        """Count an open replay; for a follower, register its wake-up event.

        The registration is removed when the block exits, however it exits
        (end of stream, error, cancellation).
        """
        self.open_replays += 1
        wake = asyncio.Event() if follow else None
        if wake is not None:
            self._by_thread.setdefault(thread_id, set()).add(wake)
        try:
            yield wake
        finally:
            self.open_replays -= 1
            if wake is not None:
                events = self._by_thread.get(thread_id)
                if events is not None:
                    events.discard(wake)
                    if not events:
                        del self._by_thread[thread_id]

    async def wait(self, wake: asyncio.Event) -> None:
        """Wait for ``wake`` (a commit on the thread, or close), counted as live."""
        self.waiting += 1
        try:
            await wake.wait()
        finally:
            self.waiting -= 1

    def notify(self, thread_ids: Iterable[str]) -> None:
        """Wake the followers of ``thread_ids``; safe from any thread."""
        ids = list(thread_ids)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to wake
            self._loop.call_soon_threadsafe(self.wake, ids)

    def wake(self, thread_ids: Iterable[str]) -> None:
        """Wake the followers of ``thread_ids``; call it on the loop's thread."""
        for thread_id in thread_ids:
            for wake in self._by_thread.get(thread_id, ()):
                wake.set()

    def close(self) -> None:
        """Wake every follower so it ends its stream (daemon shutdown)."""
        self._closing = True
        for events in self._by_thread.values():
            for wake in events:
                wake.set()
