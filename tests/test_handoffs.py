"""The hand-offs of one awaited append: counted, not timed (docs/append-path.md).

A real daemon and a real client process (``bench.handoffs``), with the event
loop's ``call_soon`` / ``call_soon_threadsafe`` calls counted in each. These
counts are the structure of the append path, so load does not change them;
the bounds sit between the old structure (4 loop hand-offs per append on
each side, 1.28 loop wake-ups from the writer) and the new one (3 and 1.00).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

from bench.handoffs import measure
from turnstore.server.replay.acks import AckPump
from turnstore.server.storage.commits import deliver_commit

APPENDS = 300
# A no-op's margin over the new counts (3 and 1.00 per append).
MAX_CALL_SOON_PER_APPEND = 3.3
MAX_WRITER_WAKE_UPS_PER_APPEND = 1.05


def test_one_append_costs_three_loop_hand_offs_on_each_side() -> None:
    counts = measure(APPENDS, use_strace=False)
    daemon, client = counts["daemon"], counts["client"]
    # The daemon: the request read, the commit's delivery, the response sent.
    assert daemon["call_soon"] <= MAX_CALL_SOON_PER_APPEND, counts
    # One wake-up of the loop per commit (one append per commit here).
    assert daemon["call_soon_threadsafe"] <= MAX_WRITER_WAKE_UPS_PER_APPEND, counts
    # The client: the write's completion, the acknowledgement read, the caller.
    assert client["call_soon"] <= MAX_CALL_SOON_PER_APPEND, counts


class _CountingLoop(asyncio.SelectorEventLoop):
    """A loop that counts the wake-ups other threads ask of it."""

    def __init__(self) -> None:
        super().__init__()
        self.wake_ups = 0

    def call_soon_threadsafe(  # type: ignore[override]
        self, callback: Any, *args: Any, context: Any = None
    ) -> Any:
        self.wake_ups += 1
        return super().call_soon_threadsafe(callback, *args, context=context)


def test_a_commit_reaches_the_loop_in_one_wake_up_with_its_listeners_calls() -> None:
    """The futures and the listener's call of one commit share one loop wake-up.

    The listener runs after the loop could have drained the futures'
    results (it waits for that, briefly): before, that drain made the
    listener's call a second wake-up. Now nothing reaches the loop before
    the commit's delivery ends.
    """
    loop = _CountingLoop()
    try:
        pump = AckPump(loop)
        writes = [_Write() for _ in range(3)]
        waiters = [pump.wait(write.future) for write in writes]
        woken: list[set[str]] = []
        some_done = threading.Event()
        # What the listener saw, mid-delivery: a result already on the loop?
        resolved_during_delivery: list[bool] = []

        def listener(changed: set[str]) -> None:
            # Give the loop every chance to drain the futures first.
            some_done.wait(timeout=0.5)
            resolved_during_delivery.append(any(waiter.done() for waiter in waiters))
            pump.call_soon(woken.append, changed)

        def watch() -> None:
            # On every pass of the loop while the commit is delivered. It may
            # also run after the drain; only the listener's look counts.
            if any(waiter.done() for waiter in waiters):
                some_done.set()
            if not all(waiter.done() for waiter in waiters):
                loop.call_later(0.01, watch)

        def deliver() -> None:
            deliver_commit(writes, [(True, [i]) for i in range(3)], 0.0, [listener], [])

        async def run() -> list[Any]:
            loop.call_soon(watch)
            await loop.run_in_executor(None, deliver)
            # The listener's call came in the same drain as the results.
            return await asyncio.gather(*waiters)

        results = loop.run_until_complete(asyncio.wait_for(run(), 10))
        assert results == [[0], [1], [2]]
        assert woken == [{"t"}]
        assert resolved_during_delivery == [False]
        # run_in_executor's own completion is one wake-up; the commit is the other.
        assert loop.wake_ups == 2
    finally:
        loop.close()


class _Write:
    """A queued write as deliver_commit sees one."""

    def __init__(self) -> None:
        self.thread_id: str | None = "t"
        self.future: Future[Any] = Future()
