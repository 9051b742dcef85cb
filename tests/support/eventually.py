"""Waiting for a condition with a deadline, in place of a ``sleep`` that hopes.

A test that must see something happen asynchronously (the daemon notices a
closed connection, retention removes a thread, a follower registers) polls a
condition until it holds or the deadline passes; the poll's pace is never
what makes the test pass.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

#: Long enough for a loaded, shared machine; a condition that never holds
#: still fails the test, only later.
DEFAULT_TIMEOUT = 30.0
#: How often the condition is checked: a pace, not a synchronisation.
DEFAULT_INTERVAL = 0.05


def _timed_out(what: str, timeout: float, last: object) -> AssertionError:
    return AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def eventually(
    condition: Callable[[], T | None],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    what: str = "the condition",
    interval: float = DEFAULT_INTERVAL,
) -> T:
    """Call ``condition`` until it returns a true value, and return that value.

    The condition is always called at least once, and once more at the
    deadline. Raises AssertionError naming ``what`` and the last value when
    ``timeout`` seconds pass first. An exception from the condition is not
    caught: a condition that may fail on the way says so itself.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, value)
        time.sleep(interval)


@overload
async def eventually_async(
    condition: Callable[[], Awaitable[T | None]],
    timeout: float = ...,  # noqa: ASYNC109
    *,
    what: str = ...,
    interval: float = ...,
) -> T: ...


@overload
async def eventually_async(
    condition: Callable[[], T | None],
    timeout: float = ...,  # noqa: ASYNC109
    *,
    what: str = ...,
    interval: float = ...,
) -> T: ...


async def eventually_async(
    condition: Callable[[], T | Awaitable[T | None] | None],
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109
    *,
    what: str = "the condition",
    interval: float = DEFAULT_INTERVAL,
) -> T:
    """:func:`eventually` for async tests: the condition may be a coroutine function.

    Between checks the event loop runs (``asyncio.sleep``), so tasks the test
    waits for make progress. A synchronous condition that blocks (a
    subprocess, a database query) belongs in ``asyncio.to_thread`` inside it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        outcome = condition()
        value = await outcome if inspect.isawaitable(outcome) else outcome
        if value:
            return value
        if loop.time() >= deadline:
            raise _timed_out(what, timeout, value)
        await asyncio.sleep(interval)
