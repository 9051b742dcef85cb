"""A large batch's items and events counted from its wire bytes, before it is decoded.

Step 3 of :mod:`turnstore.server.api.grpc.ingress`: a scan of the message's
length-delimited fields that stops at the limit + 1, so that what it costs is
bounded by the limits, not by the message. A refusal is a
:class:`RefusedRequest`, which the deserializers return instead of raising
(gRPC answers UNKNOWN when a deserializer raises). Nothing here imports gRPC
or generated code.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from turnstore.server.storage.errors import InvalidArgumentError


class RefusedRequest:
    """Stands for a request message refused before or while decoding.

    gRPC answers UNKNOWN when a deserializer raises, so the deserializers
    return this instead and the handlers answer with :meth:`error`
    (INVALID_ARGUMENT). With ``ends_stream``, the refusal is of a whole
    AppendStream message, whose items cannot be answered one by one: the
    stream ends with the error.
    """

    __slots__ = ("_error", "ends_stream")

    def __init__(self, error: InvalidArgumentError, *, ends_stream: bool = False) -> None:
        self._error = error
        self.ends_stream = ends_stream

    def error(self) -> InvalidArgumentError:
        """The error to answer with."""
        return self._error


# Top-level fields of a batch request that are not events (thread id, turn,
# request id, flags, unknown fields of newer clients): more fail the scan.
OTHER_FIELDS: Final = 64
# Fields of one AppendStream item, the same way.
ITEM_FIELDS: Final = 16


class _Malformed(Exception):
    """The wire scan met bytes that are no protobuf message."""


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise _Malformed
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


class _OverBudget(Exception):
    """A message has more fields than the scan looks at."""


class _Budget:
    """How many more fields a scan may look at, shared by nested scans."""

    __slots__ = ("left",)

    def __init__(self, fields: int) -> None:
        self.left = fields


def _fields(
    data: bytes, start: int, end: int, budget: _Budget
) -> Iterator[tuple[int, int, int, int]]:
    """The length-delimited fields of ``data[start:end]``: (number, start, end).

    Only those: varints and fixed-width fields are stepped over, and so is
    everything inside unknown groups. Every field counts against
    ``budget``; past it :class:`_OverBudget` is raised, and
    :class:`_Malformed` for bytes that are no message.
    """
    at, groups = start, 0
    while at < end:
        budget.left -= 1
        if budget.left < 0:
            raise _OverBudget
        key, at = _varint(data, at)
        number, wire_type = key >> 3, key & 7
        if wire_type == 2:
            length, at = _varint(data, at)
            if at + length > end:
                raise _Malformed
            if not groups:
                yield number, wire_type, at, at + length
            at += length
        elif wire_type == 0:
            _, at = _varint(data, at)
        elif wire_type == 1:
            at += 8
        elif wire_type == 5:
            at += 4
        elif wire_type == 3:
            groups += 1
        elif wire_type == 4 and groups:
            groups -= 1
        else:
            raise _Malformed


def scan_append(data: bytes, max_events: int, max_event_bytes: int) -> RefusedRequest | None:
    """Check an AppendRequest's event count and event sizes from its wire bytes alone.

    Refuses a message with more than ``max_events`` ``events`` entries
    (counting stops at ``max_events + 1``, so the work is bounded by the
    limit, not by the message), an entry longer than ``max_event_bytes``, or
    more than :data:`OTHER_FIELDS` other fields. Returns None otherwise;
    malformed bytes end the scan without a verdict (the decoder reports
    them).
    """
    budget = _Budget(max_events + 1 + OTHER_FIELDS)
    count = 0
    try:
        for number, _, start, end in _fields(data, 0, len(data), budget):
            if number != 3:
                continue
            if count == max_events:
                return RefusedRequest(_too_many_events(max_events))
            if end - start > max_event_bytes:
                error = InvalidArgumentError(
                    f"events[{count}]",
                    f"is {end - start} bytes encoded, over the limit of {max_event_bytes}",
                )
                return RefusedRequest(error)
            count += 1
    except _Malformed:
        return None
    except _OverBudget:
        return RefusedRequest(_too_many_fields(max_events + OTHER_FIELDS))
    return None


def scan_batch(data: bytes, max_operations: int) -> RefusedRequest | None:
    """Check a history BatchRequest's operation count from its wire bytes alone.

    Refuses a message with more than ``max_operations`` ``operations``
    entries (counting stops at ``max_operations + 1``: 64 MiB of empty
    operations would otherwise be decoded into millions of objects first),
    or more than :data:`OTHER_FIELDS` other top-level fields. Returns None
    otherwise; malformed bytes end the scan without a verdict.
    """
    budget = _Budget(max_operations + 1 + OTHER_FIELDS)
    count = 0
    try:
        for number, _, _, _ in _fields(data, 0, len(data), budget):
            if number != 1:
                continue
            if count == max_operations:
                error = InvalidArgumentError(
                    "operations",
                    f"holds more than {max_operations} operations, over the limit of "
                    f"{max_operations} per batch",
                )
                return RefusedRequest(error)
            count += 1
    except _Malformed:
        return None
    except _OverBudget:
        return RefusedRequest(_too_many_fields(max_operations + OTHER_FIELDS))
    return None


class _OverLimit(Exception):
    """A stream message carries more items, events or fields than allowed."""


def _tally(
    data: bytes, start: int, end: int, counts: list[int], limits: tuple[int, int, int], deep: bool
) -> None:
    """Add the fields, items and events of one AppendStream item to ``counts``.

    ``counts`` is [fields, items, events] and ``limits`` their maxima;
    :class:`_OverLimit` is raised past one, :class:`_Malformed` for bytes
    that are no message. With ``deep``, items in ``more`` are entered (those
    must not carry ``more``, but the decoder would still decode theirs, so
    they are counted at every depth); else they are only counted. Nested
    items are entered through an explicit stack, not recursion, so that any
    depth (``more`` inside ``more`` thousands deep) is scanned within the
    limits instead of raising RecursionError. The loop is written out (tags
    and lengths of one byte read in place) because it runs once per event of
    every large stream message.
    """
    max_fields, max_items, max_events = limits
    # The enclosing items still to finish: where each resumes, ends, and its groups.
    outer: list[tuple[int, int, int]] = []
    at, groups = start, 0
    while True:
        if at >= end:
            if not outer:
                return
            at, end, groups = outer.pop()
            continue
        counts[0] += 1
        if counts[0] > max_fields:
            raise _OverLimit
        key = data[at]
        if key < 0x80:
            at += 1
        else:
            key, at = _varint(data, at)
        wire_type = key & 7
        if wire_type == 2:
            if at >= end:
                raise _Malformed
            length = data[at]
            if length < 0x80:
                at += 1
            else:
                length, at = _varint(data, at)
            inner, at = at, at + length
            if at > end:
                raise _Malformed
            if groups:
                continue
            number = key >> 3
            if number == 4:
                counts[2] += 1
                if counts[2] > max_events:
                    raise _OverLimit
            elif number == 6:
                counts[1] += 1
                if counts[1] > max_items:
                    raise _OverLimit
                if deep:
                    outer.append((at, end, groups))
                    at, end, groups = inner, at, 0
        elif wire_type == 0:
            _, at = _varint(data, at)
        elif wire_type == 1:
            at += 8
        elif wire_type == 5:
            at += 4
        elif wire_type == 3:
            groups += 1
        elif wire_type == 4 and groups:
            groups -= 1
        else:
            raise _Malformed


def scan_stream_message(data: bytes, max_events: int, max_items: int) -> RefusedRequest | None:
    """Check an AppendStreamRequest's items and events from its wire bytes alone.

    Per-item limits are checked item by item later (an item over them fails
    alone). Here the message as a whole is refused -- and the stream ended,
    since its items cannot be told apart before decoding -- when it carries
    more than ``max_items`` items (the first and those in ``more``), more
    than ``max_events`` events in all its items, or more fields than those
    can have. The work is bounded by the limits, not by the message. A
    message of at most ``2 * max_events`` bytes cannot carry too many events
    (each takes 2 bytes at least): only its top-level fields are read.
    Malformed bytes end the scan without a verdict.
    """
    max_fields = max_events + 1 + max_items * ITEM_FIELDS + OTHER_FIELDS
    counts = [0, 1, 0]
    deep = len(data) > 2 * max_events
    try:
        _tally(data, 0, len(data), counts, (max_fields, max_items, max_events), deep)
    except _Malformed:
        return None
    except _OverLimit:
        _, items, events = counts
        if items > max_items:
            error = InvalidArgumentError(
                "more", f"holds more than {max_items - 1} items, over the limit of {max_items - 1}"
            )
        elif events > max_events:
            error = InvalidArgumentError(
                "request",
                f"carries more than {max_events} events in all its items, over the limit "
                "(--max-events-per-stream-message)",
            )
        else:
            error = _too_many_fields(max_fields)
        return RefusedRequest(error, ends_stream=True)
    return None


def _too_many_events(max_events: int) -> InvalidArgumentError:
    return InvalidArgumentError(
        "events", f"holds more than {max_events} events, over the limit of {max_events} per append"
    )


def _too_many_fields(budget: int) -> InvalidArgumentError:
    return InvalidArgumentError("request", f"holds more than {budget} fields, over the limit")
