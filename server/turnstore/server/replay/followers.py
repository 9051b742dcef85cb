"""The registry of replay streams waiting for commits, and their send budget.

A follower holds one :class:`asyncio.Event` per stream, never a queue: a
commit only sets the events of the followers of the changed threads, and each
follower then reads what is new from storage at its own pace. What a follower
does hold is the one message gRPC is writing for it: gRPC keeps a message
until the peer's flow-control window takes it, that is for as long as the
peer does not read. :class:`SendBudget` bounds those bytes per follower and
over all followers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB
# The largest per-follower budget: a replay message never grew past this before.
MAX_MESSAGE_BYTES = 4 * MIB


class Followers:
    """Followers of threads, woken by the engine's commit listener.

    Use it on the event loop that serves the followers only: the engine's
    commit listener reaches :meth:`wake` through that loop (``AckPump``).
    ``send_budget`` bounds the bytes of the messages the replays have handed
    to gRPC.
    """

    def __init__(self, send_limits: SendLimits | None = None) -> None:
        self.send_budget = SendBudget(send_limits or SendLimits())
        self._by_thread: dict[str, set[asyncio.Event]] = {}
        self._closing = False
        self.open_replays = 0
        self.waiting = 0

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

    def wake(self, thread_ids: Iterable[str]) -> None:
        """Wake the followers of ``thread_ids``; call it on the loop's thread."""
        for thread_id in thread_ids:
            for wake in self._by_thread.get(thread_id, ()):
                wake.set()

    def wake_all(self) -> None:
        """Wake every follower to re-read from its cursor (a notification may be lost)."""
        for events in self._by_thread.values():
            for wake in events:
                wake.set()

    def close(self) -> None:
        """Wake every follower so it ends its stream (daemon shutdown)."""
        self._closing = True
        for events in self._by_thread.values():
            for wake in events:
                wake.set()


@dataclass(frozen=True)
class SendLimits:
    """Bounds of the bytes followers hold in messages gRPC has not sent yet.

    ``message_bytes`` caps one follower's message, whatever
    ``max_events_per_message`` it asked for (a message stops growing once it
    reaches the cap, so it holds at most the cap plus one event); a follower
    writes one message at a time, so that is what it can hold. ``total_bytes``
    bounds what all followers hold together. A follower whose message gRPC
    has not taken for ``slow_after_seconds`` counts as too slow: only such a
    follower is ended to make room, so that a burst of healthy followers only
    waits.
    """

    message_bytes: int = 128 * KIB
    total_bytes: int = 64 * MIB
    slow_after_seconds: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.message_bytes <= MAX_MESSAGE_BYTES:
            raise ValueError(
                f"the follower budget must be between 1 byte and {MAX_MESSAGE_BYTES // MIB} MiB"
            )
        if self.total_bytes < self.message_bytes:
            raise ValueError(
                f"the followers' total budget ({self.total_bytes} bytes) must be at least "
                f"one follower's ({self.message_bytes} bytes)"
            )
        if not self.slow_after_seconds >= 0:
            raise ValueError("slow_after_seconds must not be negative")


class Sender:
    """One follower's share of a :class:`SendBudget`.

    ``end(sender)`` ends the follower's stream (called at most once, on the
    event loop); ``held`` is what it has reserved or handed to gRPC (0:
    nothing), handed over since ``since`` on the budget's clock; ``ending``
    is the size of the message gRPC still keeps for it once it was ended (0:
    not ended, or that message is gone).
    """

    __slots__ = ("end", "ending", "held", "since", "was_ended")

    def __init__(self, end: Callable[[Sender], None]) -> None:
        self.end = end
        self.held = 0
        self.since = 0.0
        self.ending = 0
        self.was_ended = False


class SendBudget:
    """The bytes followers' messages hold until gRPC has taken them.

    Before reading a message from storage a follower reserves a whole
    follower budget (:meth:`reserve`), waiting while the total is spent;
    once the message is built it holds its actual size while gRPC writes
    it (:meth:`hold`), then releases it. So the total stays within
    ``limits.total_bytes`` (plus at most one event per follower, a message's
    overshoot). A reservation that does not fit ends the follower whose
    message gRPC has not taken for longest, if that is at least
    ``limits.slow_after_seconds`` (``Sender.end``), and its bytes leave the
    total: an ended follower's stream stops and drops its own copy at once.
    gRPC still keeps the message it was writing and sends it, then the
    status, once the peer reads or goes away (gRPC sends a stream's status
    after its data, and the Python server cannot reset a stream);
    :attr:`ending_bytes` counts those until :meth:`ended` says they are
    gone. Not thread-safe: use it on the event loop only.
    """

    def __init__(self, limits: SendLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._handed: set[Sender] = set()
        self._freed = asyncio.Event()
        self.held_bytes = 0
        self.ending_bytes = 0
        self.ended_too_slow = 0

    @contextlib.contextmanager
    def sending(self, end: Callable[[Sender], None]) -> Iterator[Sender]:
        """A follower's :class:`Sender`, released however the block exits."""
        sender = Sender(end)
        try:
            yield sender
        finally:
            self.release(sender)

    async def reserve(self, sender: Sender) -> None:
        """Reserve one follower budget for ``sender``'s next message.

        Returns at once while the total has room. Otherwise it ends the
        slowest follower if it is too slow, else waits for bytes to be
        released or for the slowest to become too slow. ``sender`` must hold
        nothing (it is released first).
        """
        self.release(sender)
        size = self.limits.message_bytes
        while self.held_bytes + size > self.limits.total_bytes:
            slowest = min(self._handed, key=lambda other: other.since, default=None)
            now = self._clock()
            if slowest is not None and now - slowest.since >= self.limits.slow_after_seconds:
                self._end(slowest)
                continue
            self._freed.clear()
            wait = None if slowest is None else slowest.since + self.limits.slow_after_seconds - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._freed.wait(), wait)
        sender.held = size
        self.held_bytes += size

    def hold(self, sender: Sender, size: int) -> None:
        """``sender`` hands a message of ``size`` bytes to gRPC, in place of its reservation."""
        self.held_bytes += size - sender.held
        sender.held, sender.since = size, self._clock()
        self._handed.add(sender)

    def release(self, sender: Sender) -> None:
        """gRPC took ``sender``'s message, or it has none to send: it holds nothing. Idempotent."""
        if sender.held:
            self.held_bytes -= sender.held
            sender.held = 0
            self._freed.set()
        self._handed.discard(sender)

    def ended(self, sender: Sender) -> None:
        """The message gRPC kept for ended ``sender`` is gone (sent or dropped). Idempotent."""
        self.ending_bytes -= sender.ending
        sender.ending = 0

    def _end(self, sender: Sender) -> None:
        sender.ending = sender.held
        self.release(sender)
        self.ending_bytes += sender.ending
        self.ended_too_slow += 1
        sender.was_ended = True
        sender.end(sender)
