"""Start a coroutine in the caller's own step, with no task around it.

Used by :mod:`turnstore._append_stream` for its stream writes (see
``run_now``), where Python 3.11 has no ``eager_start`` for tasks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


def run_now(coro: Coroutine[Any, Any, None], done: Callable[[BaseException | None], None]) -> None:
    """Run ``coro`` at once up to its first wait, then on from the loop; ``done`` at its end.

    What ``asyncio.Task(..., eager_start=True)`` does on Python 3.12, for the
    one coroutine it is used on (a stream write): the message leaves in the
    caller's own step, with no loop pass through a sender task first, and
    no task exists whose cancellation could reach the write (cancelling a
    grpc.aio write cancels the whole stream). ``done`` gets None, or the
    exception the coroutine ended with.
    """
    try:
        waiting = coro.send(None)
    except StopIteration:
        done(None)
        return
    except (Exception, asyncio.CancelledError) as error:
        done(error)
        return
    if waiting is None:  # a bare yield: run on in the next loop pass
        asyncio.get_running_loop().call_soon(run_now, coro, done)
        return
    # What a Task does with the future its coroutine waits on.
    waiting._asyncio_future_blocking = False
    waiting.add_done_callback(lambda _: run_now(coro, done))
