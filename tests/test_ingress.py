"""Refuse before you spend: hostile requests cost the daemon little to refuse.

One real daemon (per module) with a bearer token. A request packed with
about 12.6 million minimal events (60 MiB, just under the daemon's 65 MiB
message limit) used to cost 1.6 GB of memory before it was refused without a
token (it was decoded first), and half a minute of a blocked event loop with
one (every envelope was converted before the count limit applied). Here each
such request must be refused while the daemon's anonymous memory (RssAnon
from /proc/PID/status, sampled every few milliseconds during the call) grows
by less than a stated bound and health checks keep answering within a
second.

The bounds: without a token the message is never read, so the daemon holds
no more than what HTTP/2 flow control let the client send (bound: 24 MiB).
With a token it must be received before it can be counted: gRPC holds it
once and hands it to Python as one bytes object, so about twice its size at
the peak (bound: 2 x 60 MiB + 24 MiB); the count is read from the wire
fields, stopping at 10,001 entries, and nothing is decoded.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, NamedTuple, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.daemon import Daemon, DaemonStarter
from tests.support.eventually import eventually_async
from turnstore import (
    AgentEventEnvelope,
    CaughtUp,
    ConversationSnapshot,
    InvalidArgumentError,
    ResourceExhaustedError,
    TurnstoreClient,
    UnauthenticatedError,
)
from turnstore.server.api.grpc.ingress import IngressConfig
from turnstore.server.api.grpc.wire_scan import scan_append, scan_stream_message
from turnstore.v1 import turnstore_pb2 as pb

T = TypeVar("T")

MIB: Final = 1 << 20
TOKEN: Final = "ingress-secret-token"
PACKED_BYTES: Final = 60 * MIB
# An AppendRequest.events entry (field 3) holding an envelope with type "t".
APPEND_ENTRY: Final = b"\x1a\x03\x22\x01t"
# The same as an AppendStreamRequest.events entry (field 4).
STREAM_ENTRY: Final = b"\x22\x03\x22\x01t"
# Unauthenticated calls sent at once (four once reached 6.7 GB and stalled health 17 s).
AT_ONCE: Final = 4
UNREAD_BOUND_KIB: Final = 24 * 1024
RECEIVED_BOUND_KIB: Final = (3 * PACKED_BYTES + 24 * MIB) // 1024
HEALTH_BOUND_SECONDS: Final = 1.0
CALL_TIMEOUT: Final = 120.0
APPEND: Final = "/turnstore.v1.EventStoreService/Append"
APPEND_STREAM: Final = "/turnstore.v1.EventStoreService/AppendStream"
GET_TURN: Final = "/turnstore.v1.EventStoreService/GetTurn"
CHANNEL_OPTIONS: Final = [("grpc.max_send_message_length", 128 * MIB)]


def packed(prefix: bytes, entry: bytes) -> bytes:
    """A message of ``prefix`` and as many ``entry``s as fit in PACKED_BYTES."""
    return prefix + entry * ((PACKED_BYTES - len(prefix)) // len(entry))


def packed_append() -> bytes:
    """An AppendRequest to thread "packed", turn 1, of minimal events."""
    return packed(b"\x0a\x06packed\x10\x01", APPEND_ENTRY)


def packed_item() -> bytes:
    """An AppendStreamRequest (request_id 7, thread "packed", turn 1) of minimal events."""
    return packed(b"\x08\x07\x12\x06packed\x18\x01", STREAM_ENTRY)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("ingress")
    token_file = base / "token"
    token_file.write_text(TOKEN + "\n")
    starter = DaemonStarter(base, shared=True)
    yield starter("lmdb", "--auth-token-file", str(token_file))
    starter.close()


def rss_anon_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc status")


class Cost:
    """What one hostile call cost the daemon: peak memory growth, slowest health check."""

    def __init__(self) -> None:
        self.baseline_kib = 0
        self.peak_kib = 0
        self.call_seconds = 0.0
        self.health_seconds: list[float] = []
        self.health_failures: list[str] = []

    @property
    def growth_kib(self) -> int:
        return self.peak_kib - self.baseline_kib

    @property
    def slowest_health(self) -> float:
        return max(self.health_seconds, default=float("inf"))

    def __repr__(self) -> str:
        return (
            f"Cost(call={self.call_seconds:.3f} s, growth={self.growth_kib / 1024:.1f} MiB, "
            f"slowest health={self.slowest_health:.3f} s over {len(self.health_seconds)} checks, "
            f"health failures={self.health_failures})"
        )


async def measured(daemon: Daemon, call: Callable[[], Awaitable[T]]) -> tuple[T, Cost]:
    """Run ``call`` while sampling the daemon's RssAnon and checking its health.

    Both run on threads of their own (health through the blocking client),
    so that the test's own event loop, busy sending the hostile message,
    does not slow them down.
    """
    assert daemon.process is not None
    pid = daemon.process.pid
    cost = Cost()
    cost.baseline_kib = cost.peak_kib = rss_anon_kib(pid)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            cost.peak_kib = max(cost.peak_kib, rss_anon_kib(pid))

    def check_health() -> None:
        with grpc.insecure_channel(daemon.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                started = time.perf_counter()
                try:
                    response = stub.Check(
                        health_pb2.HealthCheckRequest(), timeout=HEALTH_BOUND_SECONDS
                    )
                except grpc.RpcError as error:
                    cost.health_failures.append(str(error.code()))
                else:
                    assert response.status == health_pb2.HealthCheckResponse.SERVING
                cost.health_seconds.append(time.perf_counter() - started)
                if done.wait(0.01):  # pacing, not synchronisation
                    return

    threads = [threading.Thread(target=task, daemon=True) for task in (sample, check_health)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    try:
        result = await asyncio.wait_for(call(), CALL_TIMEOUT)
    finally:
        cost.call_seconds = time.perf_counter() - started
        done.set()
        for thread in threads:
            thread.join()
    cost.peak_kib = max(cost.peak_kib, rss_anon_kib(pid))
    return result, cost


@asynccontextmanager
async def channel_to(daemon: Daemon) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(daemon.target, options=CHANNEL_OPTIONS) as channel:
        yield channel


def bearer(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


async def unary_status(
    daemon: Daemon, method: str, body: bytes, token: str | None
) -> tuple[grpc.StatusCode, str]:
    async with channel_to(daemon) as channel:
        call = channel.unary_unary(method)
        try:
            await call(body, metadata=bearer(token), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def warm_up(daemon: Daemon) -> None:
    """One ordinary append first, so that lazy allocations are not counted as cost."""
    async with TurnstoreClient(daemon.target, token=TOKEN) as client:
        await client.events.append("warm-up", 1, AgentEventEnvelope.new({"type": "t"}, 0))


def assert_cheap(cost: Cost, bound_kib: int) -> None:
    assert not cost.health_failures, cost
    assert cost.slowest_health < HEALTH_BOUND_SECONDS, cost
    assert cost.growth_kib < bound_kib, cost


async def test_a_packed_append_without_a_token_is_refused_before_it_is_read(
    guarded: Daemon,
) -> None:
    await warm_up(guarded)
    message = packed_append()
    outcomes, cost = await measured(
        guarded,
        lambda: asyncio.gather(
            *(unary_status(guarded, APPEND, message, None) for _ in range(AT_ONCE))
        ),
    )
    assert [code for code, _ in outcomes] == [grpc.StatusCode.UNAUTHENTICATED] * AT_ONCE, outcomes
    assert_cheap(cost, UNREAD_BOUND_KIB)
    print(f"{AT_ONCE} unauthenticated 60 MiB Appends at once: {cost}")


async def test_a_packed_append_with_a_token_is_refused_by_the_batch_limit(
    guarded: Daemon,
) -> None:
    await warm_up(guarded)
    (code, details), cost = await measured(
        guarded, lambda: unary_status(guarded, APPEND, packed_append(), TOKEN)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "events" in details and "10000 per append" in details, details
    assert_cheap(cost, RECEIVED_BOUND_KIB)
    print(f"authenticated 60 MiB Append: {cost}")
    async with TurnstoreClient(guarded.target, token=TOKEN) as client:
        assert await client.events.event_count("packed") == 0


class StreamOutcome(NamedTuple):
    code: grpc.StatusCode
    details: str
    responses: list[pb.AppendStreamResponse]


async def stream_outcomes(daemon: Daemon, items: list[bytes], token: str | None) -> StreamOutcome:
    """Send raw AppendStream messages; return the final status and every response.

    Through the blocking client, on a thread: when the daemon ends a call
    while a message is still being sent, grpc.aio's client reports its own
    failed write (INTERNAL) instead of the status the daemon sent; the
    blocking client reports the daemon's.
    """

    def run() -> StreamOutcome:
        with grpc.insecure_channel(daemon.target, options=CHANNEL_OPTIONS) as channel:
            method = channel.stream_stream(
                APPEND_STREAM, response_deserializer=pb.AppendStreamResponse.FromString
            )
            responses: list[pb.AppendStreamResponse] = []
            try:
                for response in method(iter(items), metadata=bearer(token), timeout=CALL_TIMEOUT):
                    responses.append(response)
            except grpc.RpcError as error:
                return StreamOutcome(error.code(), error.details() or "", responses)
            return StreamOutcome(grpc.StatusCode.OK, "", responses)

    return await asyncio.to_thread(run)


async def test_a_packed_stream_item_without_a_token_is_refused_before_it_is_read(
    guarded: Daemon,
) -> None:
    await warm_up(guarded)
    message = packed_item()
    outcomes, cost = await measured(
        guarded,
        lambda: asyncio.gather(
            *(stream_outcomes(guarded, [message], None) for _ in range(AT_ONCE))
        ),
    )
    assert [(o.code, o.responses) for o in outcomes] == [
        (grpc.StatusCode.UNAUTHENTICATED, [])
    ] * AT_ONCE, outcomes
    assert_cheap(cost, UNREAD_BOUND_KIB)
    print(f"{AT_ONCE} unauthenticated 60 MiB AppendStream items at once: {cost}")


async def test_a_packed_stream_message_with_a_token_ends_its_stream_cheaply(
    guarded: Daemon,
) -> None:
    await warm_up(guarded)
    (code, details, _), cost = await measured(
        guarded, lambda: stream_outcomes(guarded, [packed_item()], TOKEN)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "more than 200000 events in all its items" in details, details
    assert_cheap(cost, RECEIVED_BOUND_KIB)
    print(f"authenticated 60 MiB AppendStream item: {cost}")


def stream_item(request_id: int, thread: bytes, entries: int) -> bytes:
    """An AppendStreamRequest of ``entries`` minimal events to turn 1, in wire form."""
    header = b"\x08" + varint(request_id) + b"\x12" + varint(len(thread)) + thread + b"\x18\x01"
    return header + STREAM_ENTRY * entries


def in_more(item: bytes) -> bytes:
    return b"\x32" + varint(len(item)) + item


async def test_items_packed_into_more_cannot_pass_the_per_append_limit(guarded: Daemon) -> None:
    """3,500 items of 3,500 events each: every item within the limits, 12 million in all."""
    await warm_up(guarded)
    item = in_more(stream_item(9, b"more", 3_500))
    message = stream_item(8, b"more", 1) + item * ((PACKED_BYTES - 64) // len(item))
    (code, details, _), cost = await measured(
        guarded, lambda: stream_outcomes(guarded, [message], TOKEN)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "more than 200000 events in all its items" in details, details
    assert_cheap(cost, RECEIVED_BOUND_KIB)
    print(f"authenticated 60 MiB AppendStream message packed into more: {cost}")
    async with TurnstoreClient(guarded.target, token=TOKEN) as client:
        assert await client.events.event_count("more") == 0


async def test_an_over_long_item_in_a_large_stream_message_fails_alone(guarded: Daemon) -> None:
    thread = f"alone-{uuid.uuid4()}"

    def envelope(n: int) -> pb.EventEnvelope:
        return pb.EventEnvelope(event_id=f"e{n}", type="t", body=b"{}")

    over_long = pb.AppendStreamRequest(
        request_id=2, thread_id=thread, turn=1, events=[envelope(0)] * 15_000
    )
    message = pb.AppendStreamRequest(
        request_id=1,
        thread_id=thread,
        turn=1,
        events=[envelope(1)],
        more=[
            over_long,
            pb.AppendStreamRequest(request_id=3, thread_id=thread, turn=1, events=[envelope(2)]),
        ],
    ).SerializeToString()
    assert len(message) > 64 * 1024  # decoded on the thread pool
    code, details, responses = await stream_outcomes(guarded, [message], TOKEN)
    assert code == grpc.StatusCode.OK, details
    first, refused, last = responses
    assert (first.request_id, list(first.positions)) == (1, [0])
    assert refused.request_id == 2 and refused.HasField("error"), refused
    assert refused.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "15000 events, over the limit of 10000 per append" in refused.error.message
    assert (last.request_id, list(last.positions)) == (3, [1])


async def test_a_large_message_to_a_small_rpc_is_refused_undecoded(guarded: Daemon) -> None:
    body = (
        pb.GetTurnRequest(thread_id="t", turn=1).SerializeToString()
        + b"\x2a\x80\x80\x08"
        + b"x" * (128 * 1024)
    )
    code, details = await unary_status(guarded, GET_TURN, body, TOKEN)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "over the limit of 65536 bytes for GetTurn" in details, details


async def test_the_client_sees_typed_errors_for_refusals(guarded: Daemon) -> None:
    too_many = [AgentEventEnvelope.new({"type": "t"}, n) for n in range(10_001)]
    async with TurnstoreClient(guarded.target, token=TOKEN) as client:
        with pytest.raises(InvalidArgumentError, match="over the limit of 10000 per append"):
            await client.events.append_many("typed", 1, too_many)
    async with TurnstoreClient(guarded.target) as anonymous:
        with pytest.raises(UnauthenticatedError):
            await anonymous.events.append_many("typed", 1, too_many[:1])


async def test_large_valid_requests_are_decoded_off_the_loop_and_stored(guarded: Daemon) -> None:
    """Append, AppendStream items and Save over 64 KiB take the thread-pool path."""
    thread = f"large-{uuid.uuid4()}"
    pad = "x" * 1000
    first = [AgentEventEnvelope.new({"type": "t", "n": n, "pad": pad}, n) for n in range(200)]
    second = [AgentEventEnvelope.new({"type": "t", "n": n, "pad": pad}, n) for n in range(200)]
    snapshot = ConversationSnapshot(messages=[{"role": "user", "text": "y" * MIB}], pinned=[False])
    async with TurnstoreClient(guarded.target, token=TOKEN) as client:
        assert await client.events.append_many(thread, 1, first) == list(range(200))
        async with client.events.appender() as appender:
            assert await (await appender.submit(thread, 2, second)) == list(range(200, 400))
        history = client.history(f"large-{uuid.uuid4()}")
        await history.save(snapshot)
        assert await history.load() == snapshot
        for turn, sent in ((1, first), (2, second)):
            stored = await client.events.get_turn(thread, turn)
            assert stored is not None
            assert [e.event_id for e in stored.events] == [e.event_id for e in sent]


async def test_a_connection_holds_at_most_its_streams(start_daemon: DaemonStarter) -> None:
    daemon = start_daemon("lmdb", "--max-streams-per-connection", "2")
    async with TurnstoreClient(daemon.target) as client:
        # Each replay starts its call at once: start the third after the two.
        first, second = (client.events.replay(f"s{n}", follow=True) for n in range(2))
        assert await anext(aiter(first)) == CaughtUp(0)
        assert await anext(aiter(second)) == CaughtUp(0)
        third = client.events.replay("s2", follow=True)
        waiting = asyncio.ensure_future(anext(aiter(third)))
        # A bounded wait for what must not happen: the third stream is not
        # started while two are open on this connection.
        done, _ = await asyncio.wait({waiting}, timeout=1.0)
        assert not done, "a third stream ran on a connection limited to two"
        await first.aclose()
        assert await asyncio.wait_for(waiting, 30) == CaughtUp(0)
        await second.aclose()
        await third.aclose()
    assert daemon.stop() == 0


async def test_connections_past_the_limit_are_closed(start_daemon: DaemonStarter) -> None:
    daemon = start_daemon("lmdb", "--max-connections", "2")
    request = pb.EventCountRequest(thread_id="t").SerializeToString()

    async def count_over_a_new_connection() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(daemon.target) as channel:
            try:
                await channel.unary_unary("/turnstore.v1.EventStoreService/EventCount")(
                    request, timeout=10
                )
            except grpc.aio.AioRpcError as error:
                return error.code()
        return grpc.StatusCode.OK

    first, second = TurnstoreClient(daemon.target), TurnstoreClient(daemon.target)
    try:
        assert [await first.events.event_count("t"), await second.events.event_count("t")] == [0, 0]
        assert await count_over_a_new_connection() == grpc.StatusCode.UNAVAILABLE
        await second.aclose()
        # The daemon learns of the closed connection asynchronously.

        async def released() -> bool:
            return bool(await count_over_a_new_connection() == grpc.StatusCode.OK)

        await eventually_async(released, what="the closed connection to be released")
    finally:
        await first.aclose()
        await second.aclose()
    assert daemon.stop() == 0


async def test_a_message_over_max_request_bytes_is_refused_from_its_length(
    start_daemon: DaemonStarter,
) -> None:
    daemon = start_daemon("lmdb", "--max-request-bytes", "1MiB")
    small = ConversationSnapshot(messages=[{"text": "s" * 900_000}], pinned=[False])
    big = ConversationSnapshot(messages=[{"text": "b" * (16 * MIB)}], pinned=[False])
    async with TurnstoreClient(daemon.target) as client:
        history = client.history("bounded")
        await history.save(small)

        async def save_big() -> None:
            with pytest.raises(ResourceExhaustedError, match="larger than max"):
                await history.save(big)

        _, cost = await measured(daemon, save_big)
        assert await history.load() == small
    assert_cheap(cost, UNREAD_BOUND_KIB)
    assert daemon.stop() == 0


# -- the wire scan, against the decoder -------------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, wire_type: int, payload: bytes = b"") -> bytes:
    return varint(number << 3 | wire_type) + payload


# Fields no request message has (numbers 9-15): every wire type, groups nested.
unknown_fields = st.recursive(
    st.one_of(
        st.builds(
            lambda n, v: field(n, 0, varint(v)), st.integers(9, 15), st.integers(0, 2**64 - 1)
        ),
        st.builds(
            lambda n, b: field(n, 2, varint(len(b)) + b), st.integers(9, 15), st.binary(max_size=20)
        ),
        st.builds(lambda n: field(n, 1, b"\x00" * 8), st.integers(9, 15)),
        st.builds(lambda n: field(n, 5, b"\x00" * 4), st.integers(9, 15)),
    ),
    lambda inner: st.builds(
        lambda n, parts: field(n, 3) + b"".join(parts) + field(n, 4),
        st.integers(9, 15),
        st.lists(inner, max_size=3),
    ),
    max_leaves=6,
)


def envelope_entries(draw: st.DrawFn, number: int) -> list[bytes]:
    entries = []
    for _ in range(draw(st.integers(0, 30))):
        envelope = pb.EventEnvelope(
            event_id="e", type="t", body=b"b" * draw(st.integers(0, 40))
        ).SerializeToString()
        entries.append(field(number, 2, varint(len(envelope)) + envelope))
    return entries


def with_unknown_fields(draw: st.DrawFn, parts: list[bytes]) -> bytes:
    for _ in range(draw(st.integers(0, 4))):
        parts.insert(draw(st.integers(0, len(parts))), draw(unknown_fields))
    return b"".join(parts)


@st.composite
def append_requests(draw: st.DrawFn) -> bytes:
    """An AppendRequest's wire bytes, with unknown fields anywhere."""
    return with_unknown_fields(draw, [field(2, 0, varint(1)), *envelope_entries(draw, 3)])


@st.composite
def stream_messages(draw: st.DrawFn, depth: int = 2) -> bytes:
    """An AppendStreamRequest's wire bytes: items in ``more`` (in ``more``), unknown fields."""
    parts = [field(1, 0, varint(draw(st.integers(0, 2**64 - 1)))), *envelope_entries(draw, 4)]
    if depth:
        for _ in range(draw(st.integers(0, 4))):
            item = draw(stream_messages(depth - 1))
            parts.append(field(6, 2, varint(len(item)) + item))
    return with_unknown_fields(draw, parts)


@settings(max_examples=300, deadline=None, database=None)
@given(
    data=append_requests(),
    max_events=st.integers(1, 25),
    max_event_bytes=st.integers(1, 50),
    twice=st.booleans(),
)
def test_the_append_scan_agrees_with_the_decoder(
    data: bytes, max_events: int, max_event_bytes: int, twice: bool
) -> None:
    if twice:  # a merged message: repeated fields add up
        data += data
    decoded = pb.AppendRequest.FromString(data)
    expected = None
    for index, envelope in enumerate(decoded.events):
        if index == max_events:
            expected = ("events", "more than")
            break
        if envelope.ByteSize() > max_event_bytes:
            expected = (f"events[{index}]", "bytes encoded")
            break
    refusal = scan_append(data, max_events, max_event_bytes)
    if expected is None:
        assert refusal is None
        return
    assert refusal is not None and not refusal.ends_stream
    error = refusal.error()
    assert error.field == expected[0] and expected[1] in str(error), error


def tally(message: pb.AppendStreamRequest) -> tuple[int, int]:
    """Items and events of a decoded stream message, at every depth of ``more``."""
    items, events = 1, len(message.events)
    for inner in message.more:
        more_items, more_events = tally(inner)
        items, events = items + more_items, events + more_events
    return items, events


def tally_scanned(data: bytes, max_events: int) -> tuple[int, int]:
    """What the stream scan must count: items at every depth only in a message
    long enough to hold too many events (a shorter one cannot, and is decoded
    with its items in ``more`` counted by the service)."""
    message = pb.AppendStreamRequest.FromString(data)
    items, events = tally(message)
    if len(data) <= 2 * max_events:
        items = 1 + len(message.more)
    return items, events


@settings(max_examples=200, deadline=None, database=None)
@given(data=stream_messages(), max_events=st.integers(1, 60), max_items=st.integers(1, 12))
def test_the_stream_scan_agrees_with_the_decoder(
    data: bytes, max_events: int, max_items: int
) -> None:
    items, events = tally_scanned(data, max_events)
    refusal = scan_stream_message(data, max_events, max_items)
    if items <= max_items and events <= max_events:
        assert refusal is None
        return
    assert refusal is not None and refusal.ends_stream
    error = refusal.error()
    assert ("more than" in str(error)) and error.field in ("more", "request"), error


@settings(max_examples=300, deadline=None, database=None)
@given(data=st.binary(max_size=200), max_events=st.integers(1, 5))
def test_on_random_bytes_the_scans_refuse_only_what_is_over_the_limits(
    data: bytes, max_events: int
) -> None:
    """Where random bytes decode, a refusal means too many events or items."""
    try:
        append = pb.AppendRequest.FromString(data)
    except Exception:
        pass
    else:
        refused = scan_append(data, max_events, 1 << 20)
        assert (refused is not None) == (len(append.events) > max_events), refused
    try:
        items, events = tally_scanned(data, max_events)
    except Exception:  # no AppendStreamRequest
        return
    refused = scan_stream_message(data, max_events, 4)
    assert (refused is not None) == (items > 4 or events > max_events), refused


def test_the_scans_look_at_a_bounded_number_of_fields() -> None:
    """Millions of unknown fields cost no more than the limit's worth of scanning."""
    unknown = field(15, 0, varint(1)) * 1_000_000
    append = field(3, 2, b"\x00") + unknown
    refused = scan_append(append, 100, 1 << 20)
    assert refused is not None and "fields" in str(refused.error())
    refused = scan_stream_message(field(4, 2, b"\x00") + unknown, 100, 4)
    assert refused is not None and refused.ends_stream and "fields" in str(refused.error())


def test_bounds_that_would_leave_a_gap_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 32768"):
        IngressConfig(max_events_per_stream_message=32_767)
    with pytest.raises(ValueError, match="max_request_bytes"):
        IngressConfig(max_request_bytes=1024)
    for name in ("max_streams_per_connection", "max_connections", "large_decodes"):
        with pytest.raises(ValueError, match=name):
            IngressConfig(**{name: 0})


def json_heavy(event_ids: list[str]) -> list[pb.EventEnvelope]:
    """Events of 1 MiB JSON bodies that are costly to check (349,000 empty objects each)."""
    body = b'{"a":[' + b",".join([b"{}"] * 349_000) + b"]}"
    return [pb.EventEnvelope(event_id=event_id, type="t", body=body) for event_id in event_ids]


@pytest.mark.parametrize("rpc", ["Append", "AppendStream"])
async def test_a_large_valid_batch_is_checked_off_the_event_loop(guarded: Daemon, rpc: str) -> None:
    """60 events of 1 MiB JSON bodies: their checks take seconds, health must not wait."""
    thread = f"json-{uuid.uuid4()}"
    events = json_heavy([f"{thread}-{n}" for n in range(60)])
    await warm_up(guarded)
    if rpc == "Append":
        body = pb.AppendRequest(thread_id=thread, turn=1, events=events).SerializeToString()
        (code, details), cost = await measured(
            guarded, lambda: unary_status(guarded, APPEND, body, TOKEN)
        )
        assert code == grpc.StatusCode.OK, details
    else:
        item = pb.AppendStreamRequest(request_id=1, thread_id=thread, turn=1, events=events)
        outcome, cost = await measured(
            guarded, lambda: stream_outcomes(guarded, [item.SerializeToString()], TOKEN)
        )
        assert outcome.code == grpc.StatusCode.OK, outcome.details
        assert list(outcome.responses[0].positions) == list(range(60)), outcome.responses
    print(f"valid 60 MiB {rpc} of JSON bodies: {cost}")
    assert not cost.health_failures, cost
    assert cost.slowest_health < HEALTH_BOUND_SECONDS, cost
    async with TurnstoreClient(guarded.target, token=TOKEN) as client:
        assert await client.events.event_count(thread) == 60
