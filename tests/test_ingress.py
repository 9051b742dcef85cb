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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.daemon import Daemon
from turnstore import InvalidArgumentError, TurnstoreClient, UnauthenticatedError
from turnstore.models import AgentEventEnvelope
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


PACKED_APPEND: Final = packed(b"\x0a\x06packed\x10\x01", APPEND_ENTRY)
# request_id 7, thread "packed", turn 1.
PACKED_ITEM: Final = packed(b"\x08\x07\x12\x06packed\x18\x01", STREAM_ENTRY)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    base = tmp_path_factory.mktemp("ingress")
    token_file = base / "token"
    token_file.write_text(TOKEN + "\n")
    daemon = Daemon(base / "data", extra_args=["--auth-token-file", str(token_file)])
    daemon.start()
    yield daemon
    assert daemon.stop() == 0, daemon.log_lines


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
            f"Cost(growth={self.growth_kib / 1024:.1f} MiB, "
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
    try:
        result = await asyncio.wait_for(call(), CALL_TIMEOUT)
    finally:
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
    outcomes, cost = await measured(
        guarded,
        lambda: asyncio.gather(
            *(unary_status(guarded, APPEND, PACKED_APPEND, None) for _ in range(AT_ONCE))
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
        guarded, lambda: unary_status(guarded, APPEND, PACKED_APPEND, TOKEN)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "events" in details and "10000 per append" in details, details
    assert_cheap(cost, RECEIVED_BOUND_KIB)
    print(f"authenticated 60 MiB Append: {cost}")
    async with TurnstoreClient(guarded.target, token=TOKEN) as client:
        assert await client.events.event_count("packed") == 0


async def stream_outcomes(
    daemon: Daemon, items: list[bytes], token: str | None
) -> tuple[grpc.StatusCode, list[pb.AppendStreamResponse]]:
    """Send raw AppendStream items; return the final status and every response.

    Through the blocking client, on a thread: when the daemon ends a call
    while an item is still being sent, grpc.aio's client reports its own
    failed write (INTERNAL) instead of the status the daemon sent; the
    blocking client reports the daemon's.
    """

    def run() -> tuple[grpc.StatusCode, list[pb.AppendStreamResponse]]:
        with grpc.insecure_channel(daemon.target, options=CHANNEL_OPTIONS) as channel:
            method = channel.stream_stream(
                APPEND_STREAM, response_deserializer=pb.AppendStreamResponse.FromString
            )
            responses: list[pb.AppendStreamResponse] = []
            try:
                for response in method(iter(items), metadata=bearer(token), timeout=CALL_TIMEOUT):
                    responses.append(response)
            except grpc.RpcError as error:
                return error.code(), responses
            return grpc.StatusCode.OK, responses

    return await asyncio.to_thread(run)


def valid_item(request_id: int, thread: str) -> bytes:
    envelope = pb.EventEnvelope(event_id=f"ok-{request_id}", type="t", body=b"{}")
    item = pb.AppendStreamRequest(
        request_id=request_id, thread_id=thread, turn=1, events=[envelope]
    )
    data: bytes = item.SerializeToString()
    return data


async def test_a_packed_stream_item_without_a_token_is_refused_before_it_is_read(
    guarded: Daemon,
) -> None:
    await warm_up(guarded)
    outcomes, cost = await measured(
        guarded,
        lambda: asyncio.gather(
            *(stream_outcomes(guarded, [PACKED_ITEM], None) for _ in range(AT_ONCE))
        ),
    )
    assert outcomes == [(grpc.StatusCode.UNAUTHENTICATED, [])] * AT_ONCE
    assert_cheap(cost, UNREAD_BOUND_KIB)
    print(f"{AT_ONCE} unauthenticated 60 MiB AppendStream items at once: {cost}")


async def test_a_packed_stream_item_with_a_token_fails_alone_by_the_batch_limit(
    guarded: Daemon,
) -> None:
    await warm_up(guarded)
    items = [PACKED_ITEM, valid_item(8, "after-packed")]
    (code, responses), cost = await measured(
        guarded, lambda: stream_outcomes(guarded, items, TOKEN)
    )
    assert code == grpc.StatusCode.OK
    refused, stored = responses
    assert refused.request_id == 7 and refused.HasField("error"), refused
    assert refused.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "10000 per append" in refused.error.message, refused
    assert (stored.request_id, list(stored.positions)) == (8, [0])
    assert_cheap(cost, RECEIVED_BOUND_KIB)
    print(f"authenticated 60 MiB AppendStream item: {cost}")


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
