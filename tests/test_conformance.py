"""The store contracts of docs/contract.md, written once against the protocols.

Every test runs against the in-memory stores of ``turnstore.testing`` and
against the gRPC client talking to a real ``turnstore serve`` subprocess.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from turnstore import (
    AgentEventEnvelope,
    ConversationSnapshot,
    EventIdConflictError,
    EventStore,
    HistoryStore,
    InvalidArgumentError,
    StoredTurnEvents,
    TurnAlreadyFinishedError,
    TurnFinishedError,
)


def delta(text: str, sequence: int = 0) -> AgentEventEnvelope:
    return AgentEventEnvelope(
        event_id=str(uuid.uuid4()),
        sequence=sequence,
        timestamp="2026-11-21T10:00:00.123456Z",
        event={"type": "text_delta", "message_id": "m1", "delta": text},
    )


def deltas(events: list[AgentEventEnvelope]) -> list[str]:
    return [event.event["delta"] for event in events]


async def test_unknown_thread_reads_as_empty(event_store: EventStore, thread_id: str) -> None:
    assert await event_store.get_turn(thread_id, 1) is None
    assert await event_store.get_turns(thread_id) == []
    assert await event_store.get_events(thread_id) == []
    assert await event_store.event_count(thread_id) == 0
    assert await event_store.get_events_since(thread_id, 0) == []


async def test_unknown_turn_of_known_thread_is_none(
    event_store: EventStore, thread_id: str
) -> None:
    await event_store.append(thread_id, 1, delta("a"))
    assert await event_store.get_turn(thread_id, 2) is None
    assert await event_store.get_turn(thread_id, 0) is None


async def test_append_then_get_turn_keeps_order_and_fields(
    event_store: EventStore, thread_id: str
) -> None:
    written = [delta("Hel", 0), delta("lo", 1), delta("!", 1)]
    for envelope in written:
        await event_store.append(thread_id, 1, envelope)
    turn = await event_store.get_turn(thread_id, 1)
    assert turn == StoredTurnEvents(turn=1, events=written, finished=False)


async def test_positions_count_from_zero_in_commit_order(
    event_store: EventStore, thread_id: str
) -> None:
    positions = [
        await event_store.append(thread_id, 2, delta("a")),
        await event_store.append(thread_id, 1, delta("b")),
        await event_store.append(thread_id, 2, delta("c")),
    ]
    assert positions == [0, 1, 2]
    assert await event_store.event_count(thread_id) == 3


async def test_finish_turn_sets_the_flag(event_store: EventStore, thread_id: str) -> None:
    await event_store.append(thread_id, 1, delta("a"))
    await event_store.finish_turn(thread_id, 1)
    turn = await event_store.get_turn(thread_id, 1)
    assert turn is not None
    assert turn.finished is True
    assert deltas(turn.events) == ["a"]


async def test_finishing_an_unknown_turn_creates_an_empty_finished_turn(
    event_store: EventStore, thread_id: str
) -> None:
    await event_store.finish_turn(thread_id, 3)
    assert await event_store.get_turn(thread_id, 3) == StoredTurnEvents(3, [], True)
    assert await event_store.get_turns(thread_id) == [StoredTurnEvents(3, [], True)]
    assert await event_store.event_count(thread_id) == 0


async def test_append_to_finished_turn_fails_and_stores_nothing(
    event_store: EventStore, thread_id: str
) -> None:
    await event_store.append(thread_id, 1, delta("a"))
    await event_store.finish_turn(thread_id, 1)
    with pytest.raises(TurnFinishedError, match="cannot append to finished turn 1"):
        await event_store.append(thread_id, 1, delta("late"))
    turn = await event_store.get_turn(thread_id, 1)
    assert turn is not None
    assert deltas(turn.events) == ["a"]
    assert await event_store.event_count(thread_id) == 1


async def test_finishing_twice_fails(event_store: EventStore, thread_id: str) -> None:
    await event_store.finish_turn(thread_id, 4)
    with pytest.raises(TurnAlreadyFinishedError, match="turn 4 is already finished"):
        await event_store.finish_turn(thread_id, 4)


async def test_get_turns_is_ascending_with_gaps_and_turn_zero(
    event_store: EventStore, thread_id: str
) -> None:
    for turn in (7, 0, 3):
        await event_store.append(thread_id, turn, delta(f"t{turn}"))
    await event_store.finish_turn(thread_id, 0)
    turns = await event_store.get_turns(thread_id)
    assert [(t.turn, deltas(t.events), t.finished) for t in turns] == [
        (0, ["t0"], True),
        (3, ["t3"], False),
        (7, ["t7"], False),
    ]


async def test_interleaved_turns_keep_append_order_per_turn(
    event_store: EventStore, thread_id: str
) -> None:
    # The agent may append to turn N+1 while turn N is still open.
    await event_store.append(thread_id, 1, delta("1a"))
    await event_store.append(thread_id, 2, delta("2a"))
    await event_store.append(thread_id, 1, delta("1b"))
    await event_store.append(thread_id, 2, delta("2b"))
    await event_store.finish_turn(thread_id, 2)
    await event_store.append(thread_id, 1, delta("1c"))
    turns = await event_store.get_turns(thread_id)
    assert [(t.turn, deltas(t.events), t.finished) for t in turns] == [
        (1, ["1a", "1b", "1c"], False),
        (2, ["2a", "2b"], True),
    ]
    # get_events walks turn by turn, not in commit order.
    assert deltas(await event_store.get_events(thread_id)) == ["1a", "1b", "1c", "2a", "2b"]


async def test_get_events_since_skips_the_first_offset_of_get_events(
    event_store: EventStore, thread_id: str
) -> None:
    await event_store.append(thread_id, 2, delta("2a"))
    await event_store.append(thread_id, 1, delta("1a"))
    await event_store.append(thread_id, 1, delta("1b"))
    await event_store.append(thread_id, 3, delta("3a"))
    everything = await event_store.get_events(thread_id)
    assert deltas(everything) == ["1a", "1b", "2a", "3a"]
    for offset in range(6):
        assert await event_store.get_events_since(thread_id, offset) == everything[offset:]


async def test_negative_offset_is_rejected(event_store: EventStore, thread_id: str) -> None:
    with pytest.raises(InvalidArgumentError, match="offset"):
        await event_store.get_events_since(thread_id, -1)


async def test_clear_removes_everything_and_frees_turn_numbers(
    event_store: EventStore, thread_id: str
) -> None:
    await event_store.append(thread_id, 1, delta("old"))
    await event_store.finish_turn(thread_id, 1)
    await event_store.clear(thread_id)
    assert await event_store.get_turns(thread_id) == []
    assert await event_store.event_count(thread_id) == 0
    assert await event_store.append(thread_id, 1, delta("new")) == 0
    turn = await event_store.get_turn(thread_id, 1)
    assert turn is not None
    assert (deltas(turn.events), turn.finished) == (["new"], False)


async def test_clear_of_unknown_thread_succeeds(event_store: EventStore, thread_id: str) -> None:
    await event_store.clear(thread_id)
    assert await event_store.event_count(thread_id) == 0


async def test_clear_leaves_other_threads_alone(event_store: EventStore, thread_id: str) -> None:
    other = f"{thread_id}-other"
    await event_store.append(thread_id, 1, delta("mine"))
    await event_store.append(other, 1, delta("theirs"))
    await event_store.clear(thread_id)
    assert deltas(await event_store.get_events(other)) == ["theirs"]


async def test_sequence_is_kept_as_given_and_not_unique(
    event_store: EventStore, thread_id: str
) -> None:
    written = [delta("a", 0), delta("b", 0), delta("c", 2**64 - 1)]
    for envelope in written:
        await event_store.append(thread_id, 1, envelope)
    assert [e.sequence for e in await event_store.get_events(thread_id)] == [0, 0, 2**64 - 1]


JSON_EVENTS: list[dict[str, Any]] = [
    {"type": "text_delta", "message_id": "m1", "delta": "Hel"},
    {"type": "tool_call_start", "id": "c1", "name": "search", "input": {"q": ["a", 1, None]}},
    {"type": "done", "usage": {"input_tokens": 10, "output_tokens": 2.5}, "ok": True},
    {"type": "error", "message": 'naïve — ✓ \u0000 "quoted" \\ \n'},
    {"type": "some_future_kind"},
]


@pytest.mark.parametrize("event", JSON_EVENTS, ids=[e["type"] for e in JSON_EVENTS])
async def test_events_round_trip_their_flat_json_exactly(
    event_store: EventStore, thread_id: str, event: dict[str, Any]
) -> None:
    text = AgentEventEnvelope(str(uuid.uuid4()), 5, "2026-01-02T03:04:05Z", event).to_json()
    await event_store.append(thread_id, 0, AgentEventEnvelope.from_json(text))
    (stored,) = await event_store.get_events(thread_id)
    assert stored.to_json() == text


async def test_turn_numbers_up_to_u64_max(event_store: EventStore, thread_id: str) -> None:
    await event_store.append(thread_id, 2**64 - 1, delta("far"))
    assert [t.turn for t in await event_store.get_turns(thread_id)] == [2**64 - 1]


@pytest.mark.parametrize("turn", [-1, 2**64])
async def test_turn_out_of_range_is_rejected(
    event_store: EventStore, thread_id: str, turn: int
) -> None:
    with pytest.raises(InvalidArgumentError, match="turn"):
        await event_store.append(thread_id, turn, delta("x"))


async def test_empty_thread_id_is_rejected(event_store: EventStore) -> None:
    with pytest.raises(InvalidArgumentError, match="thread_id"):
        await event_store.append("", 1, delta("x"))


def snapshot(*texts: str) -> ConversationSnapshot:
    return ConversationSnapshot(
        messages=[{"role": "user", "content": text} for text in texts],
        pinned=[index == 0 for index in range(len(texts))],
    )


async def test_load_before_any_save_is_none(
    history_factory: Callable[[str], HistoryStore],
) -> None:
    assert await history_factory(f"conv-{uuid.uuid4()}").load() is None


async def test_save_then_load_round_trips(
    history_factory: Callable[[str], HistoryStore],
) -> None:
    store = history_factory(f"conv-{uuid.uuid4()}")
    saved = snapshot("hello", "wörld ✓", "")
    await store.save(saved)
    assert await store.load() == saved


async def test_save_is_a_full_overwrite(history_factory: Callable[[str], HistoryStore]) -> None:
    store = history_factory(f"conv-{uuid.uuid4()}")
    await store.save(snapshot("one", "two", "three"))
    await store.save(snapshot("only"))
    assert await store.load() == snapshot("only")


async def test_empty_snapshot_round_trips(history_factory: Callable[[str], HistoryStore]) -> None:
    store = history_factory(f"conv-{uuid.uuid4()}")
    await store.save(ConversationSnapshot([], []))
    assert await store.load() == ConversationSnapshot([], [])


async def test_keys_are_independent(history_factory: Callable[[str], HistoryStore]) -> None:
    key = f"conv-{uuid.uuid4()}"
    await history_factory(key).save(snapshot("a"))
    assert await history_factory(f"{key}-b").load() is None
    assert await history_factory(key).load() == snapshot("a")


async def test_appending_the_same_event_id_again_returns_its_position(
    event_store: EventStore, thread_id: str
) -> None:
    envelope = delta("once")
    first = await event_store.append(thread_id, 1, envelope)
    await event_store.append(thread_id, 1, delta("other"))
    assert await event_store.append(thread_id, 1, envelope) == first
    await event_store.finish_turn(thread_id, 1)
    # A retry of an append that committed before the finish still succeeds.
    assert await event_store.append(thread_id, 1, envelope) == first
    assert deltas(await event_store.get_events(thread_id)) == ["once", "other"]
    assert await event_store.event_count(thread_id) == 2


async def test_an_event_id_stored_in_another_turn_conflicts(
    event_store: EventStore, thread_id: str
) -> None:
    envelope = delta("a")
    await event_store.append(thread_id, 1, envelope)
    with pytest.raises(EventIdConflictError, match="already stored in turn 1"):
        await event_store.append(thread_id, 2, envelope)
    assert await event_store.event_count(thread_id) == 1


async def test_event_ids_are_per_thread_and_forgotten_by_clear(
    event_store: EventStore, thread_id: str
) -> None:
    envelope = delta("a")
    assert await event_store.append(thread_id, 1, envelope) == 0
    assert await event_store.append(f"{thread_id}-2", 5, envelope) == 0
    await event_store.append(thread_id, 1, delta("b"))
    await event_store.clear(thread_id)
    assert await event_store.append(thread_id, 3, envelope) == 0
