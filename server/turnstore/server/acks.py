"""Hand write results from the engine's writer thread to the event loop.

``asyncio.wrap_future`` wakes the event loop once per future. A group commit
resolves many futures at once, so :class:`AckPump` queues the results and
wakes the loop once per burst, which then resolves them all.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class AckPump:
    """Await engine futures on one event loop, with one wake-up per burst."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ready: collections.deque[tuple[Future[Any], asyncio.Future[Any]]] = (
            collections.deque()
        )
        self._lock = threading.Lock()
        self._scheduled = False

    def wait(self, future: Future[T]) -> asyncio.Future[T]:
        """An asyncio future (of this pump's loop) that mirrors ``future``.

        Call it on the loop's thread. Cancelling the returned future does not
        cancel the write: it may still commit.
        """
        waiter: asyncio.Future[T] = self._loop.create_future()
        future.add_done_callback(lambda done: self._push(done, waiter))
        return waiter

    def _push(self, done: Future[Any], waiter: asyncio.Future[Any]) -> None:
        with self._lock:
            self._ready.append((done, waiter))
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # a closed loop has nobody waiting
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items = list(self._ready)
            self._ready.clear()
            self._scheduled = False
        for done, waiter in items:
            if waiter.done():
                continue
            error = done.exception()
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(done.result())
