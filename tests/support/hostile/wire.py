"""Raw calls to a live daemon, each checked for a status the contract allows.

Requests go as raw bytes over a ``grpc.aio`` channel, so anything can be
sent: well-formed requests with out-of-range values and oversized strings,
requests with unknown fields or merged twice, random bytes, and strings that
are not UTF-8. A status outside OK, INVALID_ARGUMENT, FAILED_PRECONDITION,
NOT_FOUND, RESOURCE_EXHAUSTED and ABORTED (UNKNOWN or INTERNAL above all), or
a ``turnstore-error`` reason its code may not carry, fails with the daemon's
log. Here: the limits README.md and the proto document, the table of RPCs,
one request (:class:`Op`), and :class:`Wire`, which sends it and reads the
state around it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import grpc

from tests.support.daemon import Daemon
from turnstore.v1 import turnstore_pb2 as pb

MIB: Final = 1 << 20
MAX_U64: Final = (1 << 64) - 1
TIMEOUT: Final = 30.0
JSON: Final = "application/json"
CHANNEL_OPTIONS: Final = [
    ("grpc.max_receive_message_length", 64 * MIB),
    ("grpc.max_send_message_length", 128 * MIB),
]

# The limits the proto and docs/contract.md document (by default).
MAX_THREAD_ID: Final = 256
MAX_KEY: Final = 1000
MAX_EVENT_ID: Final = 256
MAX_TYPE: Final = 128
MAX_TIMESTAMP: Final = 64
MAX_CONTENT_TYPE: Final = 128  # the daemon's (api/grpc/envelopes.py); the proto names none
MAX_EVENT: Final = MIB
MAX_EVENTS: Final = 10_000
MAX_SNAPSHOT: Final = 32 * MIB

OK: Final = grpc.StatusCode.OK
INVALID: Final = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION: Final = grpc.StatusCode.FAILED_PRECONDITION
OUT_OF_RANGE: Final = grpc.StatusCode.OUT_OF_RANGE
ALLOWED: Final = frozenset(
    {
        OK,
        INVALID,
        PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        OUT_OF_RANGE,
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
    OUT_OF_RANGE: {"cursor_out_of_range"},
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
