"""No hung agents: every call of the Python client has a deadline, keepalive
pings find a daemon that stopped answering, and an unreachable daemon is
named with the cause.

A frozen daemon is a real ``turnstore serve`` stopped with SIGSTOP (and
always continued with SIGCONT): the kernel still accepts its connections and
buffers what is sent, but nothing answers, as with a hung process or a
silently dropped network path. The deadlines are short (2 s) so the tests are
quick; each failure must come after the deadline and well before a generous
bound. The TypeScript and Rust clients' counterparts are in
tests/test_typescript.py and client/rust/tests/deadlines.rs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.daemon import Daemon, DaemonStarter
from tests.test_typescript import TS_DIR, _Driver, node_env, typescript_build  # noqa: F401
from turnstore import (
    AgentEventEnvelope,
    ConversationSnapshot,
    DeadlineExceededError,
    RetryPolicy,
    TurnstoreClient,
    UnavailableError,
)
from turnstore.client import DEFAULT_TIMEOUT, KEEPALIVE_OPTIONS
from turnstore.replay import CaughtUp

T = TypeVar("T")

DEADLINE = 2.0
# Far above the deadline: a call still waiting then would have waited forever.
HUNG = 20.0


def delta(text: str, sequence: int = 0) -> AgentEventEnvelope:
    return AgentEventEnvelope.new({"type": "text_delta", "delta": text}, sequence)


@pytest.fixture
def own_daemon(start_daemon: DaemonStarter) -> Daemon:
    """A daemon of this test's own, to freeze (continued and stopped after the test)."""
    return start_daemon()


@contextlib.contextmanager
def frozen(daemon: Daemon) -> Iterator[None]:
    """The daemon stopped (SIGSTOP) inside the block, continued (SIGCONT) after it."""
    assert daemon.process is not None
    os.kill(daemon.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(daemon.process.pid, signal.SIGCONT)


async def fails_after_its_deadline(call: Awaitable[T], error: type[Exception]) -> Exception:
    """Await ``call``; it must raise ``error`` after the deadline, well before HUNG."""
    started = time.monotonic()
    with pytest.raises(error) as raised:
        await asyncio.wait_for(call, HUNG)
    took = time.monotonic() - started
    assert DEADLINE * 0.9 <= took < DEADLINE * 4, f"failed after {took:.2f} s"
    return raised.value


def test_the_default_deadline_is_30_seconds_with_keepalive_pings() -> None:
    assert DEFAULT_TIMEOUT == 30.0
    assert inspect.signature(TurnstoreClient).parameters["timeout"].default == DEFAULT_TIMEOUT
    keepalive = dict(KEEPALIVE_OPTIONS)
    assert 10_000 <= keepalive["grpc.keepalive_time_ms"] <= 30_000
    assert keepalive["grpc.http2.ping_timeout_ms"] <= 20_000
    assert keepalive["grpc.keepalive_permit_without_calls"] == 1


@pytest.mark.parametrize("write_mode", ["stream", "unary"])
async def test_an_append_and_a_finish_on_a_frozen_daemon_fail_within_the_clients_deadline(
    own_daemon: Daemon, write_mode: Any
) -> None:
    thread = f"t-{uuid.uuid4()}"
    async with TurnstoreClient(
        own_daemon.target, timeout=DEADLINE, write_mode=write_mode
    ) as client:
        assert await client.events.append(thread, 1, delta("warm")) == 0
        with frozen(own_daemon):
            await fails_after_its_deadline(
                client.events.append(thread, 1, delta("late")), DeadlineExceededError
            )
            await fails_after_its_deadline(
                client.events.finish_turn(thread, 2), DeadlineExceededError
            )
        # Thawed: the same client goes on (in stream mode, on the same stream).
        assert await client.events.append(thread, 3, delta("after")) >= 1
        await client.events.finish_turn(thread, 3)


async def test_an_appender_on_a_frozen_daemon_fails_within_the_clients_deadline(
    own_daemon: Daemon,
) -> None:
    thread = f"t-{uuid.uuid4()}"
    async with (
        TurnstoreClient(own_daemon.target, timeout=DEADLINE) as client,
        client.events.appender() as appender,
    ):
        assert await appender.append(thread, 1, delta("warm")) == 0
        with frozen(own_daemon):
            await fails_after_its_deadline(
                appender.append(thread, 1, delta("late")), DeadlineExceededError
            )
            await fails_after_its_deadline(appender.finish_turn(thread, 1), DeadlineExceededError)
        # The stream stayed open: acknowledgements come in order again.
        assert await appender.append(thread, 2, delta("after")) == 2


async def test_history_and_a_catch_up_replay_on_a_frozen_daemon_fail_within_the_deadline(
    own_daemon: Daemon,
) -> None:
    thread = f"t-{uuid.uuid4()}"
    async with TurnstoreClient(own_daemon.target, timeout=DEADLINE) as client:
        history = client.history(f"k-{uuid.uuid4()}")
        assert await history.load() is None
        with frozen(own_daemon):
            await fails_after_its_deadline(history.load(), DeadlineExceededError)
            await fails_after_its_deadline(
                history.save(ConversationSnapshot([], [])), DeadlineExceededError
            )

            # A replay that does not follow has the client's deadline by default.
            async def catch_up() -> None:
                async with client.events.replay(thread) as replay:
                    async for _ in replay:
                        pass

            await fails_after_its_deadline(catch_up(), DeadlineExceededError)


async def _first_item(replay: AsyncIterator[Any]) -> Any:
    return await anext(replay)


async def test_a_follower_of_a_frozen_daemon_fails_once_a_keepalive_ping_goes_unanswered(
    own_daemon: Daemon,
) -> None:
    """A follower has no deadline; an unanswered keepalive ping ends it.

    Pings every 10 s (the most often the daemon allows), 1 s to answer.
    """
    thread = f"t-{uuid.uuid4()}"
    quick_pings = [("grpc.keepalive_time_ms", 10_000), ("grpc.http2.ping_timeout_ms", 1_000)]
    async with (
        TurnstoreClient(own_daemon.target, options=quick_pings) as client,
        client.events.replay(thread, follow=True) as replay,
    ):
        items = aiter(replay)
        assert await _first_item(items) == CaughtUp(0)
        with frozen(own_daemon):
            started = time.monotonic()
            with pytest.raises(UnavailableError):
                await asyncio.wait_for(_first_item(items), 3 * HUNG)
            assert time.monotonic() - started < 2 * HUNG


@pytest.mark.timeout(180)
async def test_the_daemon_permits_the_clients_keepalive_pings(own_daemon: Daemon) -> None:
    """An idle follower pinging every 10 s (the clients' default is 20 s) is
    not cut off: grpc's default policy answers a third ping within 5 minutes
    with GOAWAY "too_many_pings" and closes the connection under it."""
    thread = f"t-{uuid.uuid4()}"
    pings = [("grpc.keepalive_time_ms", 10_000)]
    async with (
        TurnstoreClient(own_daemon.target, options=pings) as client,
        client.events.replay(thread, follow=True) as replay,
    ):
        items = aiter(replay)
        assert await _first_item(items) == CaughtUp(0)
        # Five pings' time with nothing to deliver: the follower must still be open.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                asyncio.shield(pending := asyncio.ensure_future(_first_item(items))), 50
            )
        async with TurnstoreClient(own_daemon.target) as writer:
            await writer.events.append(thread, 1, delta("still here"))
        item = await asyncio.wait_for(pending, HUNG)
        assert item.envelope.event["delta"] == "still here"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize("write_mode", ["stream", "unary"])
async def test_an_unreachable_daemon_is_named_with_the_cause(write_mode: Any) -> None:
    target = f"127.0.0.1:{_free_port()}"
    async with TurnstoreClient(
        target, retry=RetryPolicy(attempts=1), write_mode=write_mode
    ) as client:
        for call in (client.events.finish_turn("t", 1), client.events.event_count("t")):
            with pytest.raises(UnavailableError) as raised:
                await asyncio.wait_for(call, HUNG)
            message = str(raised.value)
            assert message.startswith(f"cannot reach {target}: "), message
            assert "connection refused" in message.lower(), message


FROZEN_DRIVER = "dist/test/frozen-driver.js"


@pytest.mark.timeout(180)
def test_typescript_calls_on_a_frozen_daemon_fail_within_their_deadline(
    typescript_build: Path,  # noqa: F811 (fixture)
    node_env: dict[str, str],  # noqa: F811 (fixture)
    own_daemon: Daemon,
) -> None:
    """test/frozen-driver.ts: every kind of TypeScript call on a frozen
    daemon fails after its 2 s deadline, a follower once a keepalive ping
    goes unanswered, and an unreachable daemon is named with the cause."""
    nowhere = f"127.0.0.1:{_free_port()}"
    driver = _Driver(
        TS_DIR / FROZEN_DRIVER,
        {
            **node_env,
            "TURNSTORE_TARGET": own_daemon.target,
            "TURNSTORE_THREAD": f"ts-frozen-{uuid.uuid4()}",
            "TURNSTORE_UNREACHABLE": nowhere,
        },
    )
    try:
        ready = driver.expect("ready", timeout=60)
        with frozen(own_daemon):
            driver.send("frozen")
            expired = driver.expect("expired", timeout=60)
        driver.send("thawed")
        driver.expect("done", timeout=30)
        assert driver.finish() == 0
    finally:
        driver.finish()
    assert ready["defaultTimeoutMs"] == 30_000
    for outcome in ready["unreachable"]:
        assert outcome["error"] == "UnavailableError", outcome
        assert outcome["message"].startswith(f"cannot reach {nowhere}: "), outcome
        assert "connection refused" in outcome["message"], outcome
    calls = expired["calls"]
    follower = calls.pop("follower")
    assert follower["error"] == "UnavailableError", follower
    assert follower["waitedMs"] < 2 * HUNG * 1000, follower
    for name, outcome in calls.items():
        assert outcome["error"] == "DeadlineExceededError", (name, outcome)
        assert DEADLINE * 900 <= outcome["waitedMs"] < DEADLINE * 4000, (name, outcome)
