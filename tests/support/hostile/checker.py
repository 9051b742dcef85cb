"""What the contract predicts for each raw request, and the check of it.

:class:`Checker` reads the state just before a request, predicts its outcome
from the contract (the limits of README.md and the proto), sends it, and
checks the status code, the response, and the state afterwards. After every
example (:meth:`Checker.finish`) the daemon must still be running and serve a
normal append and read, and every thread touched must be consistent:
``EventCount`` equal to the events ``ReadEvents`` returns, with gap-free
positions. An append that repeats an event id is left to the idempotency
rules of the proto and checked only for what holds either way.
"""

from __future__ import annotations

from typing import Any

import grpc
import orjson

from tests.support.hostile.wire import (
    GET_STATS,
    INVALID,
    JSON,
    MAX_CONTENT_TYPE,
    MAX_EVENT,
    MAX_EVENT_ID,
    MAX_EVENT_TYPE_FILTERS,
    MAX_EVENTS,
    MAX_KEY,
    MAX_SNAPSHOT,
    MAX_THREAD_ID,
    MAX_TIMESTAMP,
    MAX_TYPE,
    MAX_U64,
    OK,
    OUT_OF_RANGE,
    PRECONDITION,
    REPLAY,
    Op,
    Wire,
)
from turnstore.v1 import turnstore_pb2 as pb


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
    if too_deep(body):
        return False
    return isinstance(value, dict) and not {"event_id", "sequence", "timestamp", "type"} & set(
        value
    )


MAX_JSON_DEPTH = 64  # the daemon's limit on the nesting of bodies and JSON snapshots


def json_depth(value: Any) -> int:
    """How deep arrays and objects nest in a parsed JSON value (a scalar is 0)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def too_deep(data: bytes) -> bool:
    """Whether strict JSON ``data`` nests deeper than the daemon accepts."""
    return json_depth(orjson.loads(data)) > MAX_JSON_DEPTH


def normalized(envelope: Any) -> Any:
    """The envelope as the daemon stores it: an empty content type means JSON."""
    stored = pb.EventEnvelope()
    stored.CopyFrom(envelope)
    if not stored.content_type:
        stored.content_type = JSON
    return stored


def save_is_valid(request: Any) -> bool:
    content_type = request.content_type or JSON
    return (
        valid_name(request.key, MAX_KEY)
        and len(request.data) <= MAX_SNAPSHOT
        and utf8_size(content_type) <= MAX_CONTENT_TYPE
        and "\0" not in content_type
        and (content_type.split(";")[0].strip().lower() != JSON or strict_json(request.data))
    )


def strict_json(data: bytes) -> bool:
    """What the daemon takes as a snapshot labelled JSON: any strict JSON value, not too deep."""
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return not too_deep(data)


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
        # A cursor at or past the end was never handed out: refused, unless
        # an epoch it names is not the thread's (then: thread_cleared, OK).
        past_end = request.HasField("after_position") and request.after_position >= count
        expected = OK
        if not valid:
            expected = INVALID
        elif past_end and not request.thread_epoch:
            expected = OUT_OF_RANGE
        elif past_end and code == OUT_OF_RANGE:
            expected = OUT_OF_RANGE  # the epoch drawn is the thread's own
        self.expect(op, code, expected, details)
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
