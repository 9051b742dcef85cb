"""Hand write results from the engine's writer thread to the event loop.

``asyncio.wrap_future`` wakes the event loop once per future. A group commit
resolves many futures at once, and then wakes the followers of the threads it
changed, so :class:`AckPump` queues both and wakes the loop once per burst,
which then resolves them all and runs the queued calls. On a writer thread
delivering a commit, the wake-up waits for the end of the delivery
(:func:`~turnstore.server.storage.commits.after_delivery`): one wake-up per
commit, never one for its futures and another for its listeners' calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from turnstore.server.storage.commits import after_delivery

T = TypeVar("T")


class AckPump:
    """Await engine futures on one event loop, with one wake-up per burst."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # Futures to mirror and calls to make, in the order they came.
        self._ready: list[tuple[Any, Any]] = []
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

    def call_soon(self, fn: Callable[[Any], None], argument: Any) -> None:
        """Run ``fn(argument)`` on the loop with the next burst; safe from any thread.

        Calls pushed after a future run after that future is resolved.
        """
        self._push(fn, argument)

    def _push(self, first: Any, second: Any) -> None:
        with self._lock:
            self._ready.append((first, second))
            if self._scheduled:
                return
            self._scheduled = True
        if not after_delivery(self._wake):
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop has nobody waiting
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._ready = self._ready, []
            self._scheduled = False
        for first, second in items:
            if not isinstance(first, Future):
                first(second)
                continue
            if second.done():
                continue
            error = first.exception()
            if error is not None:
                second.set_exception(error)
            else:
                second.set_result(first.result())
