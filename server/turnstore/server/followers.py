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

    Create it on the event loop that serves the followers; ``notify`` may be
    called from any thread. ``send_budget`` bounds the bytes of the messages
    the replays have handed to gRPC.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, send_limits: SendLimits | None = None
    ) -> None:
        self._loop = loop
        self.send_budget = SendBudget(send_limits or SendLimits())
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
            self._loop.call_soon_threadsafe(self._wake, ids)

    def _wake(self, thread_ids: list[str]) -> None:
        for thread_id in thread_ids:
            for wake in self._by_thread.get(thread_id, ()):
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
    bounds what all followers hold together.
    """

    message_bytes: int = 128 * KIB
    total_bytes: int = 64 * MIB

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


class Sender:
    """One follower's share of a :class:`SendBudget`.

    ``end(sender)`` ends the follower's stream (called at most once, on the
    event loop); ``held`` is the size of the message gRPC is writing for it (0:
    none), held since ``since`` on the budget's clock; ``ending`` is the
    size of the message gRPC still keeps for it once it was ended (0: not
    ended, or that message is gone).
    """

    __slots__ = ("end", "ending", "held", "since", "was_ended")

    def __init__(self, end: Callable[[Sender], None]) -> None:
        self.end = end
        self.held = 0
        self.since = 0.0
        self.ending = 0
        self.was_ended = False


class SendBudget:
    """The bytes followers' messages hold while gRPC writes them.

    A follower holds its message's size (:meth:`hold`) from handing it to
    gRPC until gRPC has taken it, then releases it. When a new message
    would take the total past ``limits.total_bytes``, the followers whose
    messages have waited longest are ended (``Sender.end``) until it fits,
    and their bytes leave the total: an ended follower's stream stops and
    drops its own copy at once. gRPC still keeps the message it was writing
    (at most ``limits.message_bytes`` plus one event) and sends it, then the
    status, once the peer reads or goes away (gRPC sends a stream's status
    after its data, and the Python server cannot reset a stream);
    :attr:`ending_bytes` counts those until :meth:`ended` says they are
    gone. Not thread-safe: use it on the event loop only.
    """

    def __init__(self, limits: SendLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self._holding: set[Sender] = set()
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

    def hold(self, sender: Sender, size: int) -> None:
        """Count ``size`` bytes as held by ``sender``, ending the slowest others if over.

        The sender itself is never ended here, and a message is held even if
        it alone is over the total (one event larger than the budget).
        """
        self.release(sender)
        while self.held_bytes + size > self.limits.total_bytes and self._holding:
            slowest = min(self._holding, key=lambda other: other.since)
            self._end(slowest)
        sender.held, sender.since = size, self._clock()
        self.held_bytes += size
        self._holding.add(sender)

    def release(self, sender: Sender) -> None:
        """gRPC took ``sender``'s message (or its stream ended): it holds nothing. Idempotent."""
        if sender in self._holding:
            self._holding.discard(sender)
            self.held_bytes -= sender.held
            sender.held = 0

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
