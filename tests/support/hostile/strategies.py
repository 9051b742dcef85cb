"""Hypothesis strategies for hostile requests to every RPC.

Well-formed requests with values at and past each limit (:data:`requests`),
the same with unknown fields or merged with a second message (:func:`ops`),
random or truncated bytes (:func:`garbage`), and strings that are not UTF-8
(:func:`with_bad_string`). Ids come from small pools, so that the examples
of one test build on each other's state (finished turns, ...).
"""

from __future__ import annotations

import uuid
from typing import Any, Final

from hypothesis import strategies as st

from tests.support.hostile.checker import utf8_size
from tests.support.hostile.wire import (
    GET_STATS,
    JSON,
    KEY_POOL,
    MAX_CONTENT_TYPE,
    MAX_EVENT_ID,
    MAX_EVENT_TYPE_FILTERS,
    MAX_KEY,
    MAX_THREAD_ID,
    MAX_TIMESTAMP,
    MAX_TYPE,
    MAX_U64,
    REPLAY,
    RPCS,
    THREAD_POOL,
    Op,
)
from turnstore.v1 import turnstore_pb2 as pb

u64s = st.one_of(st.integers(0, 4), st.just(MAX_U64), st.integers(0, MAX_U64))


def sized(limit: int, one: str = "x", two: str = "é", four: str = "😀") -> st.SearchStrategy[str]:
    """Strings around a byte limit, of 1-, 2- and 4-byte characters."""
    return st.sampled_from(
        [
            *(one * limit, one * (limit + 1)),
            *(two * (limit // 2), two * (limit // 2 + 1)),
            *(four * (limit // 4), four * (limit // 4) + one),
        ]
    )


def names(pool: list[str], limit: int, prefix: str = "") -> st.SearchStrategy[str]:
    """Names from the pool, odd ones, ones at the limit, and random text.

    The client tests pass a prefix and pool of their own, so they never read
    what the raw tests stored (bodies that are not JSON, for one).
    """
    odd = ["\x00", " ", "\x00\x01/../", "thread\n", "\u202e"]
    fill = ("c", "ç", "🎉") if prefix else ("x", "é", "😀")
    return st.one_of(
        st.sampled_from(pool),
        st.sampled_from(pool),
        st.sampled_from(["", *(prefix + name for name in odd)]),
        sized(limit - len(prefix.encode()), *fill).map(lambda name: prefix + name),
        st.text(max_size=16).map(lambda name: prefix + name),
    )


thread_ids = names(THREAD_POOL, MAX_THREAD_ID)
keys = names(KEY_POOL, MAX_KEY)
short_text = st.text(max_size=12)


def tagged(tag: uuid.UUID, name: str) -> str:
    """``name`` made unique by ``tag``, keeping its UTF-8 size when it is long."""
    unique = tag.hex
    if utf8_size(name) <= len(unique):
        return unique + name
    cut = name
    while utf8_size(cut) > utf8_size(name) - len(unique):
        cut = cut[1:]
    return unique + "x" * (utf8_size(name) - len(unique) - utf8_size(cut)) + cut


# Event ids are unique (but for "" and chance), so that appends are
# predictable; repeats go through Checker.repeated_ids.
event_ids = st.one_of(
    st.uuids().map(str),
    st.just(""),
    st.builds(tagged, st.uuids(), st.one_of(sized(MAX_EVENT_ID), short_text)),
)
fair_envelopes = st.builds(
    pb.EventEnvelope,
    event_id=st.uuids().map(str),
    sequence=u64s,
    timestamp=st.one_of(st.just(""), st.just("2026-11-21T10:00:00.000001Z")),
    type=st.text(min_size=1, max_size=20),
    body=st.binary(max_size=48),
    content_type=st.sampled_from(["", JSON, "application/octet-stream"]),
)
hostile_envelopes = st.builds(
    pb.EventEnvelope,
    event_id=event_ids,
    sequence=u64s,
    timestamp=st.one_of(st.just("2026-11-21T10:00:00.000001Z"), short_text, sized(MAX_TIMESTAMP)),
    type=st.one_of(st.just("text_delta"), st.just(""), sized(MAX_TYPE), short_text),
    body=st.one_of(
        st.binary(max_size=48),
        st.just(b'{"delta":"hi"}'),
        st.sampled_from([1_000, 20_000]).map(lambda n: b"b" * n),
    ),
    content_type=st.one_of(st.just(""), st.just(JSON), sized(MAX_CONTENT_TYPE), short_text),
)
envelopes = st.one_of(fair_envelopes, fair_envelopes, hostile_envelopes)
# Batches at the 10,000 limit are in test_size_limits_hold_at_their_boundaries.
event_lists = st.one_of(
    st.lists(fair_envelopes, min_size=1, max_size=4), st.lists(envelopes, max_size=4)
)
# Enum values outside EventOrder: proto3 enums are open, any int32 arrives.
orders = st.one_of(
    st.sampled_from([0, 1, 2]),
    st.sampled_from([0, 1, 2]),
    st.sampled_from([3, -1]),
    st.integers(-(1 << 31), (1 << 31) - 1),
)

requests: dict[str, st.SearchStrategy[Any]] = {
    "Append": st.builds(pb.AppendRequest, thread_id=thread_ids, turn=u64s, events=event_lists),
    "FinishTurn": st.builds(pb.FinishTurnRequest, thread_id=thread_ids, turn=u64s),
    "GetTurn": st.builds(pb.GetTurnRequest, thread_id=thread_ids, turn=u64s),
    "ListTurns": st.builds(pb.ListTurnsRequest, thread_id=thread_ids),
    "ReadEvents": st.builds(pb.ReadEventsRequest, thread_id=thread_ids, offset=u64s, order=orders),
    "EventCount": st.builds(pb.EventCountRequest, thread_id=thread_ids),
    "Clear": st.builds(pb.ClearRequest, thread_id=thread_ids),
    "Save": st.builds(
        pb.SaveRequest,
        key=keys,
        # JSON too: a snapshot labelled JSON (the default) must be strict JSON.
        data=st.one_of(
            st.binary(max_size=64),
            st.just(b""),
            st.sampled_from([b"{}", b"[1,2]", b'{"version":1,"messages":[],"pinned":[]}']),
        ),
        content_type=st.one_of(st.just(""), st.just(JSON), sized(MAX_CONTENT_TYPE), short_text),
    ),
    "Load": st.builds(pb.LoadRequest, key=keys),
}


optional_u64s = st.one_of(st.none(), st.none(), u64s)
replay_requests = st.builds(
    pb.ReplayRequest,
    thread_id=thread_ids,
    after_position=optional_u64s,
    from_turn=optional_u64s,
    to_turn=optional_u64s,
    event_types=st.one_of(
        st.lists(st.one_of(st.just("text_delta"), short_text), max_size=3),
        st.sampled_from([MAX_EVENT_TYPE_FILTERS, MAX_EVENT_TYPE_FILTERS + 1]).map(
            lambda n: [f"type-{i}" for i in range(n)]
        ),
    ),
    follow=st.just(False),  # a follower only ends when cancelled
    until_turn_finished=optional_u64s,
    max_events_per_message=st.one_of(st.just(0), st.integers(0, (1 << 32) - 1)),
    thread_epoch=st.one_of(st.just(0), st.just(0), u64s),
)
requests["Replay"] = replay_requests
requests["GetStats"] = st.just(pb.GetStatsRequest())


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_bytes(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def unknown_field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    return field_bytes(number, value)


# Field numbers no request uses (below the range protobuf reserves).
unknown_fields = st.builds(
    unknown_field, st.integers(16, 18_999), st.one_of(u64s, st.binary(max_size=16))
)


@st.composite
def ops(draw: st.DrawFn) -> Op:
    """A well-formed request, sometimes with unknown fields or merged with another."""
    method = draw(st.sampled_from(sorted(RPCS)))
    body = draw(requests[method]).SerializeToString()
    variant = draw(st.integers(0, 5))
    if variant == 0:
        body += draw(unknown_fields)
    elif variant == 1:
        # Two messages back to back parse as one, merged: the last scalar wins.
        body += draw(requests[method]).SerializeToString()
    return Op(RPCS[method], body)


@st.composite
def garbage(draw: st.DrawFn) -> Op:
    """Random bytes, or a valid request truncated or with bytes replaced."""
    rpc = draw(st.sampled_from([*RPCS.values(), REPLAY, GET_STATS]))
    valid = draw(requests[rpc.method]).SerializeToString()
    kind = draw(st.integers(0, 2))
    if kind == 0 or not valid:
        body = draw(st.binary(max_size=64))
    elif kind == 1:
        body = valid[: draw(st.integers(0, len(valid) - 1))]
    else:
        at = draw(st.integers(0, len(valid) - 1))
        body = valid[:at] + draw(st.binary(min_size=1, max_size=4)) + valid[at + 1 :]
    return Op(rpc, body)


def invalid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


bad_utf8 = st.one_of(
    st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\x80b"]),
    st.binary(min_size=1, max_size=12).filter(invalid_utf8),
)

GOOD_ENVELOPE: Final = pb.EventEnvelope(event_id="e", type="t").SerializeToString()


def with_bad_string(where: str, bad: bytes) -> Op:
    """A request whose string field ``where`` holds ``bad`` (not UTF-8)."""
    method, _, name = where.partition(".")
    rpc = RPCS[method]
    if method == "Append" and name.startswith("events."):
        number = pb.EventEnvelope.DESCRIPTOR.fields_by_name[name.removeprefix("events.")].number
        envelope = GOOD_ENVELOPE + field_bytes(number, bad)
        body = field_bytes(1, THREAD_POOL[0].encode()) + field_bytes(3, envelope)
    else:
        number = rpc.request.DESCRIPTOR.fields_by_name[name].number
        body = field_bytes(number, bad)
        if method == "Append":
            body += field_bytes(3, GOOD_ENVELOPE)
    return Op(rpc, body)


STRING_FIELDS: Final = [
    "Append.thread_id",
    "Append.events.event_id",
    "Append.events.timestamp",
    "Append.events.type",
    "Append.events.content_type",
    "FinishTurn.thread_id",
    "GetTurn.thread_id",
    "ListTurns.thread_id",
    "ReadEvents.thread_id",
    "EventCount.thread_id",
    "Clear.thread_id",
    "Save.key",
    "Save.content_type",
    "Load.key",
]
