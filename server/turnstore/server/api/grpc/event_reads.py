"""ReadEvents in commit order: a range of positions, oldest or newest first, in pages.

Positions are dense (0 to the view's end - 1), so ``offset`` and ``limit``
name a range of positions before anything is read, in either direction, and
a read bounded by a view whose end is lowered to that range's end reads
nothing past it: a newest-first read of the last ``n`` events costs ``n``
records, whatever the thread's length (both engines stop at the view's end).

Newest first, each page is read forwards through a window of positions that
ends where the previous page began, and sent reversed. A window whose records
do not fit one message (large events) is read again narrower, so a message
stays within the usual budget and no page is held beyond one message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from turnstore.server.api.grpc.servicer import EVENTS_PER_MESSAGE, message_budget
from turnstore.server.storage.interface import StorageEngine
from turnstore.server.storage.values import ThreadView

Run = Callable[..., Awaitable[Any]]


async def commit_order_pages(
    engine: StorageEngine,
    run: Run,
    view: ThreadView,
    offset: int,
    limit: int | None,
    newest_first: bool,
) -> AsyncIterator[list[bytes]]:
    """The records of one ReadEvents, message by message, in the order asked.

    ``offset`` skips from the oldest (or, ``newest_first``, the newest)
    event; ``limit`` (None: no limit) caps how many are sent. An offset at
    or past the end yields nothing. Raises ThreadClearedError (through
    ``run``) when the thread is cleared during the read.
    """
    end = view.end_position
    if newest_first:
        high = max(end - offset, 0)
        low = 0 if limit is None else max(high - limit, 0)
    else:
        low = min(offset, end)
        high = end if limit is None else min(low + limit, end)
    if not newest_first:
        bounded = dataclasses.replace(view, end_position=high)
        position = low
        while position < high:
            values = await run(engine.read_commit_order, bounded, position, message_budget())
            if not values:
                return
            position += len(values)
            yield values
        return
    window = EVENTS_PER_MESSAGE
    while high > low:
        start = max(high - window, low)
        bounded = dataclasses.replace(view, end_position=high)
        budget = message_budget()
        values = await run(engine.read_commit_order, bounded, start, budget)
        if not values:
            return  # the view's thread does not exist (or nothing is stored there)
        if start + len(values) < high:
            # The window did not fit one message: narrow it to as many as did
            # (strictly fewer each time; one event always fits, a read takes one).
            window = len(values)
            continue
        values.reverse()
        yield values
        high = start
        window = EVENTS_PER_MESSAGE
