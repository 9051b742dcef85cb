"""``TurnstoreClient`` with random arguments, against a live daemon.

Every failure must be a ``TurnstoreError`` (``InvalidArgumentError`` only for
arguments that break a limit), what is stored must read back as sent, and
arguments that cannot be encoded at all (lone surrogates, offsets past
2**64-1) are refused with a typed error before anything is sent.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.daemon import Daemon
from tests.support.hostile.checker import utf8_size, valid_name
from tests.support.hostile.strategies import names, tagged
from tests.support.hostile.wire import (
    MAX_EVENT_ID,
    MAX_EVENTS,
    MAX_KEY,
    MAX_THREAD_ID,
    MAX_TIMESTAMP,
    MAX_TYPE,
    MAX_U64,
    Wire,
    connect,
)
from turnstore import (
    AgentEventEnvelope,
    ConversationSnapshot,
    EventFormatError,
    FailedPreconditionError,
    InvalidArgumentError,
    StoredEvent,
    TurnAlreadyFinishedError,
    TurnFinishedError,
    TurnstoreClient,
    TurnstoreError,
    TurnstoreEventStore,
)


def json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    )


# Integers beyond 64 bits are refused by the client (no reader in another
# language gets them back exactly): tests/test_models.py covers that.
json_scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 64) - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
json_values = st.recursive(json_scalars, json_containers, max_leaves=6)
ints = st.one_of(
    st.integers(-2, 4), st.sampled_from([MAX_U64, MAX_U64 + 1, -(1 << 64)]), st.integers()
)
CLIENT_THREAD_POOL: Final = ["client-0", "client-1"]
CLIENT_KEY_POOL: Final = ["client-key-0", "client-key-1"]
client_threads = st.one_of(
    names(CLIENT_THREAD_POOL, MAX_THREAD_ID, prefix="client/"),
    st.text(min_size=1, max_size=300).map(lambda name: "client/" + name),
)
client_keys = names(CLIENT_KEY_POOL, MAX_KEY, prefix="client/")


@st.composite
def client_envelopes(draw: st.DrawFn) -> AgentEventEnvelope | EventFormatError:
    """An envelope, or the EventFormatError its construction raised."""
    event: dict[str, Any] = {"type": draw(st.one_of(st.just("text_delta"), st.text(max_size=140)))}
    event.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3)))
    try:
        return AgentEventEnvelope(
            event_id=draw(
                st.one_of(st.uuids().map(str), st.builds(tagged, st.uuids(), st.text(max_size=270)))
            ),
            sequence=draw(ints),
            timestamp=draw(st.one_of(st.just("2026-11-21T10:00:00Z"), st.text(max_size=70))),
            event=event,
        )
    except EventFormatError as error:
        return error


CLIENT_ACTIONS: Final = [
    *("append", "finish", "get_turn", "get_turns", "read", "count", "clear"),
    *("save", "load"),
]
# The failures a caller of the client may see for its own arguments.
CLIENT_ERRORS: Final = (InvalidArgumentError, FailedPreconditionError)


def client_append_is_valid(thread_id: str, turn: int, envelopes: list[AgentEventEnvelope]) -> bool:
    """The limits as they apply to what the client sends (bodies here are small)."""
    return (
        valid_name(thread_id, MAX_THREAD_ID)
        and 0 <= turn <= MAX_U64
        and 1 <= len(envelopes) <= MAX_EVENTS
        and all(
            valid_name(e.event_id, MAX_EVENT_ID)
            and valid_name(e.type, MAX_TYPE)
            and utf8_size(e.timestamp) <= MAX_TIMESTAMP
            for e in envelopes
        )
    )


async def read_list(
    events: TurnstoreEventStore, thread_id: str, offset: int, order: str
) -> list[StoredEvent]:
    return [e async for e in events.read_events(thread_id, offset, order=order)]


@dataclass
class ClientRun:
    client: TurnstoreClient
    wire: Wire
    touched: set[str] = field(default_factory=set)

    async def attempt(self, action: Callable[[], Awaitable[Any]], valid: bool) -> tuple[bool, Any]:
        """Run a client call; only typed errors may come out, and IA only for bad input."""
        try:
            return True, await action()
        except CLIENT_ERRORS as error:
            if isinstance(error, InvalidArgumentError) and valid:
                raise self.wire.fail(f"valid arguments refused: {error}") from error
            return False, error
        except Exception as error:
            raise self.wire.fail(f"untyped or unexpected error {error!r}") from error


@settings(max_examples=200, deadline=None, database=None)
@given(data=st.data())
async def test_the_client_with_random_arguments_raises_only_typed_errors(
    hostile: Daemon, data: st.DataObject
) -> None:
    async with connect(hostile) as wire, TurnstoreClient(hostile.target) as client:
        run = ClientRun(client, wire)
        events = client.events
        for _ in range(data.draw(st.integers(1, 5), label="calls")):
            thread_id = data.draw(client_threads, label="thread_id")
            turn = data.draw(ints, label="turn")
            thread_ok = valid_name(thread_id, MAX_THREAD_ID)
            turn_ok = 0 <= turn <= MAX_U64
            if thread_ok:
                run.touched.add(thread_id)
            action = data.draw(
                st.sampled_from(CLIENT_ACTIONS),
                label="action",
            )
            if action == "append":
                drawn = data.draw(st.lists(client_envelopes(), max_size=3), label="envelopes")
                made = [e for e in drawn if isinstance(e, AgentEventEnvelope)]
                before = await wire.count(thread_id) if thread_ok else 0
                valid = thread_ok and client_append_is_valid(thread_id, turn, made)
                ids = [e.event_id for e in made]
                stored = (
                    {e.envelope.event_id for e in await wire.events(thread_id)} if valid else set()
                )
                repeated = len(set(ids)) < len(ids) or bool(stored & set(ids))
                ok, result = await run.attempt(
                    partial(events.append_many, thread_id, turn, made), valid
                )
                if repeated:
                    # Idempotency by event id decides (see the proto); any typed outcome.
                    assert not ok or len(result) == len(made)
                elif ok:
                    assert valid, (thread_id, turn, made)
                    assert result == list(range(before, before + len(made)))
                    back = [e async for e in events.read_events(thread_id, before)]
                    assert [(e.turn, e.envelope) for e in back] == [(turn, e) for e in made]
                elif isinstance(result, TurnFinishedError):
                    got = await events.get_turn(thread_id, turn)
                    assert got is not None and got.finished
                else:
                    assert isinstance(result, InvalidArgumentError), result
            elif action == "finish":
                ok, result = await run.attempt(
                    partial(events.finish_turn, thread_id, turn), thread_ok and turn_ok
                )
                if ok or isinstance(result, TurnAlreadyFinishedError):
                    got = await events.get_turn(thread_id, turn)
                    assert got is not None and got.finished
            elif action == "get_turn":
                ok, result = await run.attempt(
                    partial(events.get_turn, thread_id, turn), thread_ok and turn_ok
                )
                assert not ok or result is None or result.turn == turn
            elif action == "get_turns":
                ok, result = await run.attempt(partial(events.get_turns, thread_id), thread_ok)
                if ok:
                    assert sum(len(t.events) for t in result) == await events.event_count(thread_id)
            elif action == "read":
                # The turn drawn serves as the offset; past 2**64-1, see the test below.
                offset = min(turn, MAX_U64)
                order = data.draw(st.sampled_from(["commit", "turn"]), label="order")
                ok, result = await run.attempt(
                    partial(read_list, events, thread_id, offset, order), thread_ok and offset >= 0
                )
                if ok:
                    total = await events.event_count(thread_id)
                    assert len(result) == max(0, total - offset)
            elif action == "count":
                await run.attempt(partial(events.event_count, thread_id), thread_ok)
            elif action == "clear":
                ok, _ = await run.attempt(partial(events.clear, thread_id), thread_ok)
                if ok:
                    assert await events.event_count(thread_id) == 0
            else:
                key = data.draw(client_keys, label="key")
                if not key:
                    with pytest.raises(ValueError):  # documented: the key must be non-empty
                        client.history(key)
                    continue
                history = client.history(key)
                key_ok = valid_name(key, MAX_KEY)
                if action == "load":
                    await run.attempt(history.load, key_ok)
                    continue
                messages = data.draw(st.lists(json_values, max_size=4), label="messages")
                snapshot = ConversationSnapshot(messages, [False] * len(messages))
                ok, version = await run.attempt(partial(history.save_versioned, snapshot), key_ok)
                if ok:
                    assert await history.load() == snapshot
                    loaded = await wire.snapshot(key)
                    assert loaded is not None and loaded.version == version
                    assert json.loads(loaded.data) == snapshot.to_json_dict()
        for thread_id in sorted(run.touched):
            await wire.check_thread(thread_id)
        await wire.check_alive()


surrogates = st.text(alphabet=st.characters(categories=["Cs"]), min_size=1, max_size=3).map(
    lambda s: "ok" + s
)


@settings(max_examples=40, deadline=None, database=None)
@given(
    where=st.sampled_from(
        ["thread_id", "event_id", "timestamp", "type", "body", "key", "message", "offset"]
    ),
    text=surrogates,
    past_u64=st.integers(1 << 64, 1 << 70),
)
async def test_the_client_refuses_unsendable_arguments_with_typed_errors(
    hostile: Daemon, where: str, text: str, past_u64: int
) -> None:
    """Strings with lone surrogates are not UTF-8, offsets past 2**64-1 not a uint64.

    Neither can be sent; like every other bad argument the client must refuse
    them with a TurnstoreError (its docs: "Errors are typed, all under
    turnstore.TurnstoreError"), not leak an encoder's exception.
    """
    async with TurnstoreClient(hostile.target) as client:
        thread_id = text if where == "thread_id" else CLIENT_THREAD_POOL[0]
        count = await client.events.event_count(CLIENT_THREAD_POOL[0])
        with pytest.raises(TurnstoreError):
            if where == "offset":
                await read_list(client.events, CLIENT_THREAD_POOL[0], past_u64, "commit")
            elif where in ("key", "message"):
                history = client.history(text if where == "key" else CLIENT_KEY_POOL[0])
                messages: list[Any] = [{"text": text}] if where == "message" else []
                await history.save(ConversationSnapshot(messages, [False] * len(messages)))
            else:
                fields = {"event_id": "e", "timestamp": "", "type": "t", "body": ""}
                fields[where] = text
                envelope = AgentEventEnvelope(
                    fields["event_id"],
                    0,
                    fields["timestamp"],
                    {"type": fields["type"], "text": fields["body"]},
                )
                await client.events.append(thread_id, 1, envelope)
        assert await client.events.event_count(CLIENT_THREAD_POOL[0]) == count
