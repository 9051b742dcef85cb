"""What both engines' writer threads share: group commit and the hand-off after it.

Each backend has one writer thread that takes every write waiting in its
queue and commits them in one transaction (:func:`group_commits`), then
resolves each write's future and tells the commit listeners and observers
(:func:`deliver_commit`). Kept beside the interface, not in it: these are
how an engine is built, not what the daemon knows of one.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from turnstore.server.storage.interface import CommitListener, CommitObserver


class QueuedWrite(Protocol):
    """What a backend's writer queues: the thread a write changes and its future."""

    thread_id: str | None
    future: Future[Any]


W = TypeVar("W")

# The wake-ups deferred to the end of the commit this thread is delivering
# (absent: the thread is not delivering one).
_delivery = threading.local()


def after_delivery(wake: Callable[[], None]) -> bool:
    """Defer ``wake`` to the end of the commit delivery running on this thread.

    Returns False, deferring nothing, when the calling thread is not inside
    :func:`deliver_commit` (then the caller wakes at once). Within one
    delivery the same ``wake`` runs once however often it is deferred: a
    commit's futures and its listeners' calls reach another thread (the
    event loop) in one wake-up, not one per future. Its exceptions are
    ignored.
    """
    pending: list[Callable[[], None]] | None = getattr(_delivery, "wakes", None)
    if pending is None:
        return False
    if wake not in pending:
        pending.append(wake)
    return True


def group_commits(
    writes: queue.SimpleQueue[W | None], max_batch: int, commit: Callable[[list[W]], None]
) -> None:
    """A writer thread's loop: commit whatever is queued, up to ``max_batch`` at once.

    Blocks for the first write, then takes every write already waiting, so a
    busy engine commits many writes per transaction and an idle one commits
    each at once. Returns at the ``None`` sentinel, after committing the
    writes queued before it.
    """
    while True:
        first = writes.get()
        if first is None:
            return
        batch = [first]
        stop = False
        while len(batch) < max_batch:
            try:
                item = writes.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        commit(batch)
        if stop:
            return


def deliver_commit(
    writes: Sequence[QueuedWrite],
    outcomes: Sequence[tuple[bool, Any]],
    seconds: float,
    listeners: Sequence[CommitListener],
    observers: Sequence[CommitObserver],
) -> None:
    """After a durable commit: resolve each write's future, then tell listeners and observers.

    ``outcomes`` holds ``(True, result)`` or ``(False, error)`` per write.
    Listeners learn the threads the successful writes changed (none when
    there were none); their exceptions, and the observers', are ignored.
    """
    changed: set[str] = set()
    wakes: list[Callable[[], None]] = []
    _delivery.wakes = wakes
    try:
        for write, (ok, result) in zip(writes, outcomes, strict=True):
            if ok:
                write.future.set_result(result)
                if write.thread_id is not None:
                    changed.add(write.thread_id)
            else:
                write.future.set_exception(result)
        if changed:
            for listener in listeners:
                with contextlib.suppress(Exception):
                    listener(changed)
    finally:
        # Woken once, after every future and listener of this commit: the
        # loop then finds the whole commit waiting (see after_delivery).
        _delivery.wakes = None
        for wake in wakes:
            with contextlib.suppress(Exception):
                wake()
    for observer in observers:
        with contextlib.suppress(Exception):
            observer(len(writes), seconds)
