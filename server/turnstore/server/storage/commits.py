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
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from turnstore.server.storage.interface import CommitListener, CommitObserver


class QueuedWrite(Protocol):
    """What a backend's writer queues: the thread a write changes and its future."""

    thread_id: str | None
    future: Future[Any]


W = TypeVar("W")


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
    for observer in observers:
        with contextlib.suppress(Exception):
            observer(len(writes), seconds)
