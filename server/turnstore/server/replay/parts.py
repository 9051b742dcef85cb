"""A replay step cut into the messages it makes: one per point where finishes sit.

An engine's replay step (:class:`~turnstore.server.storage.values.ReplayStep`)
may carry the events of several turns and the finishes between them (the
PostgreSQL engine reads up to the message budget in one statement). A
message's events must all precede its finish markers in the thread's
history, so the step is sent as several messages, each ending with the
finishes that sit at one frontier: the events before it, then those
finishes. Each part carries the exact cursor after it, so a reader resuming
from any message misses nothing and sees nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from turnstore.server.storage.values import FinishRecord, ReplayStep


@dataclass
class StepPart:
    """One message's worth of a step.

    ``finishes`` are (sequence number, finish) pairs, all after ``events``
    in the thread's history. ``next_position`` and ``next_finish_seq`` are
    the cursor after the part.
    """

    events: list[bytes]
    finishes: list[tuple[int, FinishRecord]]
    next_position: int
    next_finish_seq: int


def split_step(step: ReplayStep, start_position: int) -> list[StepPart]:
    """The parts of ``step``, read from ``start_position``, in order (never none).

    A finish whose frontier is at or before the position reached so far
    (one read before the step's start, when resuming with a sequence number)
    goes with the next finishes, before any further event. Events after the
    last finish make the last part; a step without events or finishes is
    one empty part carrying its cursor.
    """
    parts: list[StepPart] = []
    # A step's finishes are consecutive in the thread's finish sequence and
    # end just before next_finish_seq.
    seq = step.next_finish_seq - len(step.finishes)
    taken = 0
    position = start_position
    index = 0
    finishes = step.finishes
    while index < len(finishes):
        frontier = max(finishes[index].frontier, position)
        count = frontier - position
        events = step.events[taken : taken + count]
        taken += count
        position = frontier
        group: list[tuple[int, FinishRecord]] = []
        while index < len(finishes) and finishes[index].frontier <= frontier:
            group.append((seq, finishes[index]))
            seq += 1
            index += 1
        parts.append(StepPart(events, group, position, seq))
    if taken < len(step.events) or not parts:
        parts.append(StepPart(step.events[taken:], [], step.next_position, step.next_finish_seq))
    return parts
