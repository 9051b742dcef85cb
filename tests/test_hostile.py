"""Hostile input for every RPC of a live daemon, generated with hypothesis.

Requests go to one ``turnstore serve`` (per module) as raw bytes over a
``grpc.aio`` channel, so anything can be sent: well-formed requests with
out-of-range values and oversized strings, requests with unknown fields or
merged twice, random bytes, and strings that are not UTF-8. Each request's
outcome is predicted from the contract (the limits of README.md and the
proto) and the state read just before it, and checked: the status code, the
``turnstore-error`` reason, the response, and the state afterwards. A status
outside OK, INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND,
RESOURCE_EXHAUSTED and ABORTED (UNKNOWN or INTERNAL above all) fails with the
daemon's log. After every example the daemon must still be running and
serve a normal append and read, and every thread touched must be
consistent: ``EventCount`` equal to the events ``ReadEvents`` returns, with
gap-free positions.

Covered: the nine unary and server-streaming RPCs of EventStore and
HistoryStore (Append, FinishTurn, GetTurn, ListTurns, ReadEvents, EventCount,
Clear, Save, Load), each strictly predicted; Replay, AppendStream and
Admin.GetStats, added later, in tests of their own so that a fault in one
does not hide the others. An append that repeats an event id is left to the
idempotency rules of the proto and checked only for what holds either way.

The same is done through ``TurnstoreClient`` with random arguments, where
every failure must be a ``TurnstoreError``.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import grpc
import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.daemon import Daemon
from turnstore import (
    AgentEventEnvelope,
    ConversationSnapshot,
    EventFormatError,
    FailedPreconditionError,
    GrpcEventStore,
    InvalidArgumentError,
    StoredEvent,
    TurnAlreadyFinishedError,
    TurnFinishedError,
    TurnstoreClient,
    TurnstoreError,
)
from turnstore.v1 import turnstore_pb2 as pb

MIB: Final = 1 << 20
MAX_U64: Final = (1 << 64) - 1
TIMEOUT: Final = 30.0
JSON: Final = "application/json"
CHANNEL_OPTIONS: Final = [
    ("grpc.max_receive_message_length", 64 * MIB),
    ("grpc.max_send_message_length", 128 * MIB),
]

# The limits README.md and the proto document.
MAX_THREAD_ID: Final = 256
MAX_KEY: Final = 256
MAX_EVENT_ID: Final = 256
MAX_TYPE: Final = 128
MAX_TIMESTAMP: Final = 64
MAX_CONTENT_TYPE: Final = 128  # the daemon's (service.py); the proto names none
MAX_EVENT: Final = MIB
MAX_EVENTS: Final = 10_000
MAX_SNAPSHOT: Final = 32 * MIB

OK: Final = grpc.StatusCode.OK
INVALID: Final = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION: Final = grpc.StatusCode.FAILED_PRECONDITION
ALLOWED: Final = frozenset(
    {
        OK,
        INVALID,
        PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
# The reasons each error code may carry (None: no turnstore-error key).
REASONS: Final[dict[grpc.StatusCode, set[str | None]]] = {
    INVALID: {"invalid_argument"},
    PRECONDITION: {
        "turn_finished",
        "turn_already_finished",
        "event_id_conflict",
        "version_conflict",
    },
    grpc.StatusCode.ABORTED: {"thread_cleared"},
    grpc.StatusCode.RESOURCE_EXHAUSTED: {"storage_full", None},
    grpc.StatusCode.NOT_FOUND: {None},
}

# Few ids, so that examples build on each other's state (finished turns, ...).
THREAD_POOL: Final = ["hostile-0", "hostile-1", "hostile-2"]
KEY_POOL: Final = ["hostile-key-0", "hostile-key-1"]
CANARY: Final = "hostile-canary"


@dataclass(frozen=True)
class Rpc:
    service: str
    method: str
    request: Any
    response: Any
    streaming: bool = False

    @property
    def path(self) -> str:
        return f"/turnstore.v1.{self.service}/{self.method}"


RPCS: Final = {
    rpc.method: rpc
    for rpc in [
        Rpc("EventStoreService", "Append", pb.AppendRequest, pb.AppendResponse),
        Rpc("EventStoreService", "FinishTurn", pb.FinishTurnRequest, pb.FinishTurnResponse),
        Rpc("EventStoreService", "GetTurn", pb.GetTurnRequest, pb.GetTurnResponse),
        Rpc("EventStoreService", "ListTurns", pb.ListTurnsRequest, pb.ListTurnsResponse, True),
        Rpc("EventStoreService", "ReadEvents", pb.ReadEventsRequest, pb.ReadEventsResponse, True),
        Rpc("EventStoreService", "EventCount", pb.EventCountRequest, pb.EventCountResponse),
        Rpc("EventStoreService", "Clear", pb.ClearRequest, pb.ClearResponse),
        Rpc("HistoryStoreService", "Save", pb.SaveRequest, pb.SaveResponse),
        Rpc("HistoryStoreService", "Load", pb.LoadRequest, pb.LoadResponse),
    ]
}

# Added with replay streaming; kept apart so that a fault of one does not hide the rest.
REPLAY: Final = Rpc("EventStoreService", "Replay", pb.ReplayRequest, pb.ReplayResponse, True)
APPEND_STREAM: Final = Rpc(
    "EventStoreService", "AppendStream", pb.AppendStreamRequest, pb.AppendStreamResponse, True
)
GET_STATS: Final = Rpc("AdminService", "GetStats", pb.GetStatsRequest, pb.GetStatsResponse)
MAX_EVENT_TYPE_FILTERS: Final = 64


@dataclass
class Op:
    """One request: the bytes sent, and what they decode to (None: they do not)."""

    rpc: Rpc
    body: bytes
    request: Any = field(init=False)

    def __post_init__(self) -> None:
        try:
            self.request = self.rpc.request.FromString(self.body)
        except Exception:  # DecodeError: not a valid message of this type
            self.request = None

    def __repr__(self) -> str:
        shown = repr(self.body[:300]) + ("..." if len(self.body) > 300 else "")
        return f"Op({self.rpc.method}, {len(self.body)} bytes: {shown})"


# -- the daemon ---------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for this module's barrage; it must still stop cleanly after it."""
    daemon = Daemon(tmp_path_factory.mktemp("hostile") / "data")
    daemon.start()
    yield daemon
    assert daemon.stop() == 0, daemon.log_lines[-20:]


@contextlib.asynccontextmanager
async def connect(daemon: Daemon) -> AsyncIterator[Wire]:
    async with grpc.aio.insecure_channel(daemon.target, options=CHANNEL_OPTIONS) as channel:
        yield Wire(daemon, channel)


def _identity(data: bytes) -> bytes:
    return data


class Wire:
    """Raw calls to the daemon, each checked for a status the contract allows."""

    def __init__(self, daemon: Daemon, channel: grpc.aio.Channel) -> None:
        self.daemon = daemon
        self.channel = channel

    def fail(self, message: str) -> AssertionError:
        assert self.daemon.process is not None
        status = self.daemon.process.poll()
        state = "running" if status is None else f"EXITED with status {status}"
        tail = "\n".join(self.daemon.log_lines[-15:])
        return AssertionError(f"{message}\n-- daemon {state}; log tail --\n{tail}")

    async def send(self, rpc: Rpc, body: bytes) -> tuple[grpc.StatusCode, list[Any], str]:
        """Send raw bytes; return the status code, the decoded responses, the details."""
        responses: list[bytes] = []
        try:
            if rpc.streaming:
                stream = self.channel.unary_stream(
                    rpc.path, request_serializer=_identity, response_deserializer=_identity
                )
                async for message in stream(body, timeout=TIMEOUT):
                    responses.append(message)
            else:
                unary = self.channel.unary_unary(
                    rpc.path, request_serializer=_identity, response_deserializer=_identity
                )
                responses.append(await unary(body, timeout=TIMEOUT))
        except grpc.aio.AioRpcError as error:
            code, details = self.checked(rpc, error, [body])
            return code, [rpc.response.FromString(r) for r in responses], details
        return OK, [rpc.response.FromString(r) for r in responses], ""

    async def send_stream(
        self, rpc: Rpc, bodies: list[bytes]
    ) -> tuple[grpc.StatusCode, list[Any], str]:
        """A bidirectional call: write every body, then read every response."""
        responses: list[bytes] = []
        call = self.channel.stream_stream(
            rpc.path, request_serializer=_identity, response_deserializer=_identity
        )(timeout=TIMEOUT)
        try:
            for body in bodies:
                await call.write(body)
            await call.done_writing()
            async for message in call:
                responses.append(message)
        except grpc.aio.AioRpcError as error:
            code, details = self.checked(rpc, error, bodies)
            return code, [rpc.response.FromString(r) for r in responses], details
        return OK, [rpc.response.FromString(r) for r in responses], ""

    def checked(
        self, rpc: Rpc, error: grpc.aio.AioRpcError, bodies: list[bytes]
    ) -> tuple[grpc.StatusCode, str]:
        """The code and details of a failed call, if the contract allows them."""
        code, details = error.code(), error.details() or ""
        if code not in ALLOWED:
            raise self.fail(
                f"{rpc.method} got {code.name} ({details!r}); the contract allows only "
                f"{sorted(c.name for c in ALLOWED)}. Request: {[b[:300] for b in bodies]!r}"
            ) from error
        reasons = [
            value
            for key, value in tuple(error.trailing_metadata() or ())
            if key == "turnstore-error"
        ]
        reason = reasons[0] if reasons else None
        if reason not in REASONS[code]:
            raise self.fail(
                f"{rpc.method} got {code.name} with reason {reason!r} ({details!r})"
            ) from error
        return code, details

    async def call(self, method: str, request: Any) -> list[Any]:
        """A well-formed request that must succeed."""
        rpc = RPCS[method]
        code, responses, details = await self.send(rpc, request.SerializeToString())
        if code != OK:
            raise self.fail(f"{method}({request}) failed: {code.name} {details}")
        return responses

    async def count(self, thread_id: str) -> int:
        (response,) = await self.call("EventCount", pb.EventCountRequest(thread_id=thread_id))
        return int(response.count)

    async def events(self, thread_id: str, offset: int = 0, order: Any = 0) -> list[Any]:
        responses = await self.call(
            "ReadEvents", pb.ReadEventsRequest(thread_id=thread_id, offset=offset, order=order)
        )
        return [event for response in responses for event in response.events]

    async def turn(self, thread_id: str, turn: int) -> Any | None:
        (response,) = await self.call("GetTurn", pb.GetTurnRequest(thread_id=thread_id, turn=turn))
        return response.turn if response.found else None

    async def snapshot(self, key: str) -> Any | None:
        (response,) = await self.call("Load", pb.LoadRequest(key=key))
        return response.snapshot if response.found else None

    async def check_thread(self, thread_id: str) -> None:
        """EventCount agrees with ReadEvents (both orders) and ListTurns; no gaps."""
        count = await self.count(thread_id)
        by_position = await self.events(thread_id)
        if [e.position for e in by_position] != list(range(count)):
            raise self.fail(
                f"{thread_id!r}: EventCount {count}, ReadEvents positions "
                f"{[e.position for e in by_position]}"
            )
        by_turn = await self.events(thread_id, order=pb.EVENT_ORDER_TURN)
        if sorted(e.position for e in by_turn) != list(range(count)):
            raise self.fail(f"{thread_id!r}: turn-order ReadEvents disagrees with EventCount")
        pieces = await self.call("ListTurns", pb.ListTurnsRequest(thread_id=thread_id))
        listed = [e for piece in pieces for e in piece.turn.events]
        if sorted(e.position for e in listed) != list(range(count)):
            raise self.fail(f"{thread_id!r}: ListTurns disagrees with EventCount")
        if [e.position for e in listed] != [e.position for e in by_turn]:
            raise self.fail(f"{thread_id!r}: ListTurns and turn-order ReadEvents differ")

    async def check_alive(self) -> None:
        """The process runs and serves a normal append and read."""
        assert self.daemon.process is not None
        if self.daemon.process.poll() is not None:
            raise self.fail(f"the daemon exited with {self.daemon.process.returncode}")
        count = await self.count(CANARY)
        envelope = pb.EventEnvelope(event_id=str(uuid.uuid4()), type="canary", body=b"{}")
        (appended,) = await self.call(
            "Append", pb.AppendRequest(thread_id=CANARY, turn=1, events=[envelope])
        )
        if list(appended.positions) != [count]:
            raise self.fail(f"canary appended at {list(appended.positions)}, not [{count}]")
        read = await self.events(CANARY, offset=count)
        if [(e.position, e.envelope.event_id) for e in read] != [(count, envelope.event_id)]:
            raise self.fail(f"canary read back as {read}")


# -- what the contract predicts -------------------------------------------------


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8"))


def valid_name(text: str, limit: int) -> bool:
    return 0 < utf8_size(text) <= limit


def append_is_valid(request: Any) -> bool:
    if not valid_name(request.thread_id, MAX_THREAD_ID):
        return False
    if not 1 <= len(request.events) <= MAX_EVENTS:
        return False
    for envelope in request.events:
        stored = normalized(envelope)
        if (
            not valid_name(envelope.event_id, MAX_EVENT_ID)
            or not valid_name(envelope.type, MAX_TYPE)
            or utf8_size(envelope.timestamp) > MAX_TIMESTAMP
            or utf8_size(envelope.content_type) > MAX_CONTENT_TYPE
            or stored.ByteSize() > MAX_EVENT
            or envelope.content_type.split(";")[0].strip().lower() not in ("", JSON)
            or not strict_json_object(envelope.body)
        ):
            return False
    return True


def strict_json_object(body: bytes) -> bool:
    """What the daemon takes as a JSON body: a strict JSON object without envelope keys."""
    if not body:
        return True
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and not {"event_id", "sequence", "timestamp", "type"} & set(
        value
    )


def normalized(envelope: Any) -> Any:
    """The envelope as the daemon stores it: an empty content type means JSON."""
    stored = pb.EventEnvelope()
    stored.CopyFrom(envelope)
    if not stored.content_type:
        stored.content_type = JSON
    return stored


def save_is_valid(request: Any) -> bool:
    return (
        valid_name(request.key, MAX_KEY)
        and len(request.data) <= MAX_SNAPSHOT
        and utf8_size(request.content_type or JSON) <= MAX_CONTENT_TYPE
    )


class Checker:
    """Predicts each request's outcome from the state just before it, then checks it."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.touched: set[str] = set()

    async def run(self, op: Op) -> grpc.StatusCode:
        method, request = op.rpc.method, op.request
        if request is None:
            # Not a message of the request type at all: malformed input.
            code, _, details = await self.wire.send(op.rpc, op.body)
            self.expect(op, code, INVALID, details)
            return code
        if op.rpc.service == "HistoryStoreService":
            return await self.history(op, request)
        if op.rpc is GET_STATS:
            code, responses, details = await self.wire.send(op.rpc, op.body)
            self.expect(op, code, OK, details)
            if responses[0].map_size_bytes <= 0:
                raise self.wire.fail(f"GetStats: {responses[0]}")
            return code
        thread_id = request.thread_id
        if not valid_name(thread_id, MAX_THREAD_ID):
            code, _, details = await self.wire.send(op.rpc, op.body)
            self.expect(op, code, INVALID, details)
            return code
        self.touched.add(thread_id)
        if op.rpc is REPLAY:
            return await self.replay(op, request)
        if method == "Append" and append_is_valid(request):
            ids = [envelope.event_id for envelope in request.events]
            stored = {e.envelope.event_id for e in await self.wire.events(thread_id)}
            if len(set(ids)) < len(ids) or stored & set(ids):
                return await self.repeated_ids(op, request)
        count = await self.wire.count(thread_id)
        turn_number = request.turn if method in ("Append", "FinishTurn", "GetTurn") else 0
        before = await self.wire.turn(thread_id, turn_number)
        finished = before is not None and before.finished
        code, responses, details = await self.wire.send(op.rpc, op.body)
        fail = self.wire.fail
        after = await self.wire.count(thread_id)

        if method == "Append":
            valid = append_is_valid(request)
            self.expect(
                op, code, INVALID if not valid else PRECONDITION if finished else OK, details
            )
            if code != OK:
                if after != count:
                    raise fail(f"{op!r} was refused but the count went {count} -> {after}")
                return code
            added = len(request.events)
            positions = list(responses[0].positions)
            if positions != list(range(count, count + added)) or after != count + added:
                raise fail(f"{op!r}: positions {positions}, count {count} -> {after}")
            back = (await self.wire.events(thread_id, offset=count))[:added]
            for event, sent in zip(back, request.events, strict=True):
                if event.turn != request.turn or event.envelope != normalized(sent):
                    raise fail(f"{op!r}: read back {event} for {sent}")
        elif method == "FinishTurn":
            self.expect(op, code, PRECONDITION if finished else OK, details)
            turn = await self.wire.turn(thread_id, request.turn)
            if turn is None or not turn.finished or after != count:
                raise fail(f"{op!r}: the turn is {turn} after it, count {count} -> {after}")
            if code == OK and responses[0].event_count != len(turn.events):
                raise fail(f"{op!r}: event_count {responses[0].event_count}, {len(turn.events)}")
        elif method == "GetTurn":
            self.expect(op, code, OK, details)
            got = responses[0].turn if responses[0].found else None
            if got != before:
                raise fail(f"{op!r}: {got} differs from the turn read just before")
            if got is not None and any(e.turn != request.turn for e in got.events):
                raise fail(f"{op!r}: holds events of other turns: {got}")
        elif method == "ListTurns":
            self.expect(op, code, OK, details)
            numbers = [r.turn.turn for r in responses]
            if numbers != sorted(numbers) or any(
                e.turn != r.turn.turn for r in responses for e in r.turn.events
            ):
                raise fail(f"{op!r}: pieces out of order or mixed: {numbers}")
            if sum(len(r.turn.events) for r in responses) != count:
                raise fail(f"{op!r}: {count} events counted, others listed")
        elif method == "ReadEvents":
            known = request.order in (0, pb.EVENT_ORDER_COMMIT, pb.EVENT_ORDER_TURN)
            self.expect(op, code, OK if known else INVALID, details)
            if code == OK:
                positions = [e.position for r in responses for e in r.events]
                if request.order == pb.EVENT_ORDER_TURN:
                    expected_count = max(0, count - request.offset)
                    if len(positions) != expected_count or len(set(positions)) != expected_count:
                        raise fail(f"{op!r}: {len(positions)} events of {count}")
                elif positions != list(range(min(request.offset, count), count)):
                    raise fail(f"{op!r}: positions {positions} of {count}")
        elif method == "EventCount":
            self.expect(op, code, OK, details)
            if responses[0].count != count:
                raise fail(f"{op!r}: counted {responses[0].count}, then {count}")
        elif method == "Clear":
            self.expect(op, code, OK, details)
            if responses[0].removed_events != count or after != 0:
                raise fail(
                    f"{op!r}: removed {responses[0].removed_events} of {count}, {after} left"
                )
            listed = await self.wire.call("ListTurns", pb.ListTurnsRequest(thread_id=thread_id))
            if listed:
                raise fail(f"{op!r}: turns survived the clear: {listed}")
        return code

    async def replay(self, op: Op, request: Any) -> grpc.StatusCode:
        if request.follow:
            # A follower ends only when cancelled: not something to send here.
            return OK
        count = await self.wire.count(request.thread_id)
        code, responses, details = await self.wire.send(op.rpc, op.body)
        low = request.from_turn if request.HasField("from_turn") else 0
        high = request.to_turn if request.HasField("to_turn") else MAX_U64
        # The proto bounds the cursor at 2**63-1.
        cursor_ok = not request.HasField("after_position") or request.after_position < 1 << 63
        valid = low <= high and len(request.event_types) <= MAX_EVENT_TYPE_FILTERS and cursor_ok
        self.expect(op, code, OK if valid else INVALID, details)
        if code == OK:
            check_replay(self.wire, op, request, responses, count)
        return code

    async def repeated_ids(self, op: Op, request: Any) -> grpc.StatusCode:
        """An append that repeats an event id: idempotency decides, see the proto.

        Only what holds whichever way it decides is checked: a proper status,
        never a partial append, and positions that exist.
        """
        thread_id = request.thread_id
        count = await self.wire.count(thread_id)
        code, responses, details = await self.wire.send(op.rpc, op.body)
        after = await self.wire.count(thread_id)
        if code not in (OK, PRECONDITION):
            raise self.wire.fail(f"{op!r} got {code.name} ({details!r})")
        if code != OK and after != count:
            raise self.wire.fail(f"{op!r} was refused but the count went {count} -> {after}")
        if code == OK:
            positions = list(responses[0].positions)
            if len(positions) != len(request.events) or not all(p < after for p in positions):
                raise self.wire.fail(f"{op!r}: positions {positions} with {after} events")
        return code

    async def history(self, op: Op, request: Any) -> grpc.StatusCode:
        fail = self.wire.fail
        if not valid_name(request.key, MAX_KEY):
            code, _, details = await self.wire.send(op.rpc, op.body)
            self.expect(op, code, INVALID, details)
            return code
        before = await self.wire.snapshot(request.key)
        code, responses, details = await self.wire.send(op.rpc, op.body)
        after = await self.wire.snapshot(request.key)
        if op.rpc.method == "Load":
            self.expect(op, code, OK, details)
            got = responses[0].snapshot if responses[0].found else None
            if got != before or after != before:
                raise fail(f"{op!r}: loaded {got}, but {before} just before")
            return code
        self.expect(op, code, OK if save_is_valid(request) else INVALID, details)
        version = before.version if before is not None else 0
        if code != OK:
            if after != before:
                raise fail(f"{op!r} was refused but the snapshot changed")
            return code
        if responses[0].version != version + 1 or after is None:
            raise fail(f"{op!r}: version {responses[0].version} after {version}")
        if (after.version, after.data, after.content_type) != (
            version + 1,
            request.data,
            request.content_type or JSON,
        ):
            raise fail(f"{op!r}: loads back as {after}")
        return code

    def expect(
        self, op: Op, code: grpc.StatusCode, expected: grpc.StatusCode, details: str
    ) -> None:
        if code != expected:
            raise self.wire.fail(
                f"{op!r} decoded as {op.request!r} got {code.name} ({details!r}), "
                f"the contract says {expected.name}"
            )

    async def finish(self) -> None:
        for thread_id in sorted(self.touched):
            await self.wire.check_thread(thread_id)
        await self.wire.check_alive()


# -- strategies -----------------------------------------------------------------

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
        data=st.one_of(st.binary(max_size=64), st.just(b"")),
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


# -- the raw tests -----------------------------------------------------------------


@settings(max_examples=300, deadline=None, database=None)
@given(batch=st.lists(ops(), min_size=1, max_size=6))
async def test_every_rpc_answers_malformed_requests_as_the_contract_says(
    hostile: Daemon, batch: list[Op]
) -> None:
    async with connect(hostile) as wire:
        checker = Checker(wire)
        for op in batch:
            code = await checker.run(op)
            event(f"{op.rpc.method} -> {code.name}")  # shown by --hypothesis-show-statistics
        await checker.finish()


@settings(max_examples=150, deadline=None, database=None)
@given(batch=st.lists(garbage(), min_size=1, max_size=4))
async def test_random_bytes_as_requests_get_a_proper_status(
    hostile: Daemon, batch: list[Op]
) -> None:
    async with connect(hostile) as wire:
        checker = Checker(wire)
        for op in batch:
            code = await checker.run(op)
            event(f"{op.rpc.method} -> {code.name}")  # shown by --hypothesis-show-statistics
        await checker.finish()


@settings(max_examples=60, deadline=None, database=None)
@given(where=st.sampled_from(STRING_FIELDS), bad=bad_utf8)
async def test_strings_that_are_not_utf8_are_invalid_arguments(
    hostile: Daemon, where: str, bad: bytes
) -> None:
    op = with_bad_string(where, bad)
    assert op.request is None  # protobuf refuses it, as the daemon must
    async with connect(hostile) as wire:
        count = await wire.count(THREAD_POOL[0])
        checker = Checker(wire)
        assert await checker.run(op) == INVALID
        assert await wire.count(THREAD_POOL[0]) == count
        checker.touched.add(THREAD_POOL[0])
        await checker.finish()


def envelope_of_size(size: int) -> Any:
    """An envelope whose encoded form (as stored) is exactly ``size`` bytes."""
    envelope = pb.EventEnvelope(event_id=str(uuid.uuid4()), type="blob", content_type=JSON)
    envelope.body = b'{"x":"' + b"x" * (size - envelope.ByteSize() - 12) + b'"}'
    while envelope.ByteSize() < size:
        envelope.body = envelope.body[:-2] + b'x"}'
    assert orjson.loads(envelope.body)
    assert envelope.ByteSize() == size
    return envelope


async def test_size_limits_hold_at_their_boundaries(hostile: Daemon) -> None:
    thread_id = f"hostile-sizes-{uuid.uuid4()}"
    async with connect(hostile) as wire:
        checker = Checker(wire)
        for size in (MAX_EVENT - 1, MAX_EVENT, MAX_EVENT + 1):
            request = pb.AppendRequest(thread_id=thread_id, turn=1, events=[envelope_of_size(size)])
            code = await checker.run(Op(RPCS["Append"], request.SerializeToString()))
            assert code == (OK if size <= MAX_EVENT else INVALID)
        for count in (MAX_EVENTS, MAX_EVENTS + 1):
            many = [pb.EventEnvelope(event_id=f"many-{n}", type="t") for n in range(count)]
            request = pb.AppendRequest(thread_id=thread_id, turn=2, events=many)
            code = await checker.run(Op(RPCS["Append"], request.SerializeToString()))
            assert code == (OK if count <= MAX_EVENTS else INVALID)
        for size in (MAX_SNAPSHOT, MAX_SNAPSHOT + 1):
            request = pb.SaveRequest(key=f"hostile-size-{size}", data=b"s" * size)
            code = await checker.run(Op(RPCS["Save"], request.SerializeToString()))
            assert code == (OK if size <= MAX_SNAPSHOT else INVALID)
        # Far past the daemon's message limit (64 MiB) gRPC itself refuses the call.
        huge = pb.SaveRequest(key="hostile-huge", data=b"h" * (100 * MIB))
        code, _, _ = await wire.send(RPCS["Save"], huge.SerializeToString())
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await wire.snapshot("hostile-huge") is None
        await checker.finish()


async def test_a_thread_of_maximal_events_streams_within_the_message_limit(
    hostile: Daemon,
) -> None:
    """ListTurns, ReadEvents and Replay exist so that no read must fit in one message.

    70 events of the maximal encoded size (1 MiB) are 70 MiB, over the
    daemon's message limit (64 MiB): GetTurn of their one turn fails, as
    documented, but every stream must split them over several messages.
    """
    thread_id = f"hostile-maximal-{uuid.uuid4()}"
    events = 70
    async with connect(hostile) as wire:
        for _ in range(0, events, 14):
            batch = [envelope_of_size(MAX_EVENT) for _ in range(14)]
            await wire.call("Append", pb.AppendRequest(thread_id=thread_id, turn=1, events=batch))
        assert await wire.count(thread_id) == events
        code, _, _ = await wire.send(
            RPCS["GetTurn"], pb.GetTurnRequest(thread_id=thread_id, turn=1).SerializeToString()
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        streams: dict[str, tuple[Rpc, Any]] = {
            "ReadEvents (commit order)": (
                RPCS["ReadEvents"],
                pb.ReadEventsRequest(thread_id=thread_id),
            ),
            "ReadEvents (turn order)": (
                RPCS["ReadEvents"],
                pb.ReadEventsRequest(thread_id=thread_id, order=pb.EVENT_ORDER_TURN),
            ),
            "ListTurns": (RPCS["ListTurns"], pb.ListTurnsRequest(thread_id=thread_id)),
            "Replay": (REPLAY, pb.ReplayRequest(thread_id=thread_id)),
        }
        failed = []
        for name, (rpc, request) in streams.items():
            code, responses, details = await wire.send(rpc, request.SerializeToString())
            got = [
                e.position
                for r in responses
                for e in (r.turn.events if rpc is RPCS["ListTurns"] else r.events)
            ]
            if code != OK or got != list(range(events)):
                failed.append(f"{name}: {code.name} {details!r} after {len(got)} events")
        assert not failed, "\n".join(failed)
        await wire.check_alive()


# -- Replay, AppendStream and GetStats ------------------------------------------------


@st.composite
def replay_ops(draw: st.DrawFn) -> Op:
    """A replay request (not following), sometimes with an unknown field."""
    body = draw(replay_requests).SerializeToString()
    if draw(st.booleans()):
        body += draw(unknown_fields)
    return Op(REPLAY, body)


@settings(max_examples=150, deadline=None, database=None)
@given(batch=st.lists(st.one_of(replay_ops(), ops()), min_size=1, max_size=5))
async def test_replay_answers_hostile_requests_as_the_contract_says(
    hostile: Daemon, batch: list[Op]
) -> None:
    async with connect(hostile) as wire:
        checker = Checker(wire)
        for op in batch:
            code = await checker.run(op)
            event(f"{op.rpc.method} -> {code.name}")
        await checker.finish()


def check_replay(wire: Wire, op: Op, request: Any, responses: list[Any], count: int) -> None:
    """What a finished (not following) replay stream must look like."""
    low = request.from_turn if request.HasField("from_turn") else 0
    high = request.to_turn if request.HasField("to_turn") else MAX_U64
    events = [e for r in responses for e in r.events]
    positions = [e.position for e in events]
    if positions != sorted(set(positions)) or any(p >= count for p in positions):
        raise wire.fail(f"{op!r}: positions {positions} of {count} events")
    if request.HasField("after_position") and any(p <= request.after_position for p in positions):
        raise wire.fail(f"{op!r}: positions {positions} not after {request.after_position}")
    if any(not low <= e.turn <= high for e in events):
        raise wire.fail(f"{op!r}: events outside turns {low}..{high}")
    types = set(request.event_types)
    if types and any(e.envelope.type not in types for e in events):
        raise wire.fail(f"{op!r}: events of types not asked for")
    if sum(r.caught_up for r in responses) > 1:
        raise wire.fail(f"{op!r}: caught_up sent more than once")
    if any(r.thread_cleared for r in responses[:-1]):
        raise wire.fail(f"{op!r}: messages after thread_cleared")
    plain = not (
        request.HasField("after_position")
        or request.HasField("from_turn")
        or request.HasField("to_turn")
        or request.HasField("until_turn_finished")
        or request.event_types
        or request.thread_epoch
    )
    if plain and (
        positions != list(range(count))
        or not responses
        or not responses[-1].caught_up
        or responses[-1].next_position != count
    ):
        raise wire.fail(f"{op!r}: a plain replay of {count} events gave {responses}")


stream_items = st.builds(
    pb.AppendStreamRequest,
    request_id=u64s,
    thread_id=thread_ids,
    turn=st.one_of(st.integers(0, 3), u64s),
    events=st.one_of(st.just([]), event_lists),
    finish_turn=st.booleans(),
)


@st.composite
def stream_bodies(draw: st.DrawFn) -> list[bytes]:
    """The items of one AppendStream call (see also the junk item test below)."""
    items = draw(st.lists(stream_items, min_size=0, max_size=5))
    return [
        item.SerializeToString() + draw(st.sampled_from([b"", b"\xa0\x06\x01"])) for item in items
    ]


ITEM_CODES: Final[dict[int, set[str | None]]] = {
    INVALID.value[0]: {"invalid_argument"},
    PRECONDITION.value[0]: REASONS[PRECONDITION],
    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]: {"storage_full"},
}


@settings(max_examples=120, deadline=None, database=None)
@given(bodies=stream_bodies())
async def test_append_stream_answers_hostile_items_as_the_contract_says(
    hostile: Daemon, bodies: list[bytes]
) -> None:
    async with connect(hostile) as wire:
        items: list[Any] = []
        for body in bodies:
            item = Op(APPEND_STREAM, body).request
            if item is None:
                break
            items.append(item)
        parsed_all = len(items) == len(bodies)
        threads = sorted({i.thread_id for i in items if valid_name(i.thread_id, MAX_THREAD_ID)})
        before = {thread_id: await wire.count(thread_id) for thread_id in threads}
        code, acks, details = await wire.send_stream(APPEND_STREAM, bodies)
        event(f"AppendStream -> {code.name}")
        if code != (OK if parsed_all else INVALID):
            raise wire.fail(
                f"AppendStream of {bodies!r} ended {code.name} ({details!r}); "
                f"{'every item was' if parsed_all else 'an item was not'} an AppendStreamRequest"
            )
        if len(acks) > len(items) or (parsed_all and len(acks) != len(items)):
            raise wire.fail(f"{len(acks)} acknowledgements for {len(items)} items")
        new_positions: dict[str, set[int]] = {thread_id: set() for thread_id in threads}
        for item, ack in zip(items, acks, strict=False):
            if ack.request_id != item.request_id:
                raise wire.fail(f"ack {ack.request_id} out of order, expected {item.request_id}")
            if ack.HasField("error"):
                if ack.positions or ack.error.reason not in ITEM_CODES.get(ack.error.code, set()):
                    raise wire.fail(f"item {item} rejected with {ack}")
                event(f"AppendStream item -> {ack.error.reason}")
                plainly_invalid = not valid_name(item.thread_id, MAX_THREAD_ID) or not (
                    item.events or item.finish_turn
                )
                if plainly_invalid and ack.error.reason != "invalid_argument":
                    raise wire.fail(f"item {item} rejected with {ack}, not invalid_argument")
                continue
            event("AppendStream item -> stored")
            request = pb.AppendRequest(thread_id=item.thread_id, turn=item.turn, events=item.events)
            if (item.events and not append_is_valid(request)) or not (
                item.events or item.finish_turn
            ):
                raise wire.fail(f"invalid item {item} acknowledged as {ack}")
            if len(ack.positions) != len(item.events):
                raise wire.fail(f"item {item} acknowledged with positions {list(ack.positions)}")
            new_positions[item.thread_id] |= {
                p for p in ack.positions if p >= before[item.thread_id]
            }
            if item.finish_turn:
                turn = await wire.turn(item.thread_id, item.turn)
                if turn is None or not turn.finished:
                    raise wire.fail(f"item {item} acknowledged, but its turn is {turn}")
        for thread_id in threads:
            count = await wire.count(thread_id)
            # Every item was acknowledged, unless junk ended the stream early.
            expected = before[thread_id] + len(new_positions[thread_id])
            if count < expected or (parsed_all and count != expected):
                raise wire.fail(f"{thread_id!r}: {count} events, {expected} expected")
            await wire.check_thread(thread_id)
        await wire.check_alive()


@settings(max_examples=40, deadline=None, database=None)
@given(fields=st.lists(unknown_fields, max_size=3))
async def test_get_stats_ignores_unknown_fields(hostile: Daemon, fields: list[bytes]) -> None:
    async with connect(hostile) as wire:
        code = await Checker(wire).run(Op(GET_STATS, b"".join(fields)))
        assert code == OK
        await wire.check_alive()


# -- through the client --------------------------------------------------------------


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
    events: GrpcEventStore, thread_id: str, offset: int, order: str
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


@pytest.mark.parametrize("junk", [b"\x00", b"\xff\xff", b"\x12\x02\xc3\x28"])
async def test_an_append_stream_item_that_is_no_message_is_an_invalid_argument(
    hostile: Daemon, junk: bytes
) -> None:
    """The junk is rejected in its own acknowledgement (request_id 0); the stream goes on."""
    thread_id = f"hostile-stream-{uuid.uuid4()}"
    item = pb.AppendStreamRequest(
        request_id=1,
        thread_id=thread_id,
        turn=1,
        events=[pb.EventEnvelope(event_id=str(uuid.uuid4()), type="t")],
    )
    async with connect(hostile) as wire:
        after = pb.AppendStreamRequest(
            request_id=2,
            thread_id=thread_id,
            turn=1,
            events=[pb.EventEnvelope(event_id=str(uuid.uuid4()), type="t")],
        )
        code, acks, details = await wire.send_stream(
            APPEND_STREAM, [item.SerializeToString(), junk, after.SerializeToString()]
        )
        assert code == OK, details
        assert [(a.request_id, list(a.positions), a.error.code) for a in acks] == [
            (1, [0], 0),
            (0, [], INVALID.value[0]),
            (2, [1], 0),
        ]
        assert acks[1].error.reason == "invalid_argument"
        assert "cannot be decoded" in acks[1].error.message
        assert await wire.count(thread_id) == 2
        await wire.check_thread(thread_id)
        await wire.check_alive()
