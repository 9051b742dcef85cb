"""A replay step cut into messages (``replay.parts.split_step``), without a daemon.

An engine's step may carry several turns; every message made from it has
its events before its finish markers in the thread's history, a finish
never comes before its turn's events, and the cursor after each message
resumes exactly there.
"""

from __future__ import annotations

from turnstore.server.replay.parts import StepPart, split_step
from turnstore.server.storage.values import FinishRecord, ReplayStep


def finish(turn: int, frontier: int, count: int = 1) -> FinishRecord:
    return FinishRecord(turn, count, frontier - 1 if count else None, frontier)


def step(start: int, events: int, finishes: list[FinishRecord], next_finish_seq: int) -> ReplayStep:
    records = [b"r%d" % (start + n) for n in range(events)]
    return ReplayStep(7, records, start + events, finishes, next_finish_seq, False)


def shape(parts: list[StepPart]) -> list[tuple[list[bytes], list[tuple[int, int]], int, int]]:
    return [
        (
            part.events,
            [(seq, f.turn) for seq, f in part.finishes],
            part.next_position,
            part.next_finish_seq,
        )
        for part in parts
    ]


def test_a_step_of_three_turns_makes_a_message_per_finish_and_one_for_the_rest() -> None:
    parts = split_step(step(10, 7, [finish(1, 12), finish(2, 14), finish(3, 15)], 6), 10)
    assert shape(parts) == [
        ([b"r10", b"r11"], [(3, 1)], 12, 4),
        ([b"r12", b"r13"], [(4, 2)], 14, 5),
        ([b"r14"], [(5, 3)], 15, 6),
        ([b"r15", b"r16"], [], 17, 6),
    ]


def test_finishes_at_one_frontier_go_together_and_a_step_ending_on_them_has_no_empty_tail() -> None:
    # Two turns finished at once, then an empty turn finished: one message.
    finishes = [finish(4, 3), finish(5, 3), finish(6, 3, count=0)]
    parts = split_step(step(0, 3, finishes, 3), 0)
    assert shape(parts) == [([b"r0", b"r1", b"r2"], [(0, 4), (1, 5), (2, 6)], 3, 3)]


def test_finishes_left_before_the_start_come_first_with_no_event() -> None:
    # Resumed with a sequence number after a step that carried its most
    # finishes: those left over sit before the events still to come.
    parts = split_step(step(5, 2, [finish(8, 4), finish(9, 5)], 12), 5)
    assert shape(parts) == [([], [(10, 8), (11, 9)], 5, 12), ([b"r5", b"r6"], [], 7, 12)]


def test_a_step_with_nothing_is_one_empty_part_carrying_its_cursor() -> None:
    assert shape(split_step(step(9, 0, [], 4), 9)) == [([], [], 9, 4)]
