"""What docs/clients.md promises of the Python client, as of the TypeScript and Rust ones.

A replay that fails with UnavailableError before its first item is started
again by the retry policy (nothing was delivered, so nothing can repeat);
one that fails after an item is not (resuming is the cursor's job).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.daemon import DaemonStarter
from turnstore import (
    AgentEventEnvelope,
    CaughtUp,
    RetryPolicy,
    StoredEvent,
    TurnstoreClient,
    UnavailableError,
)
from turnstore.replay import ReplayItem

# Retries for about ten seconds: long enough for a daemon to start.
PATIENT = RetryPolicy(attempts=60, initial_backoff=0.05, max_backoff=0.2)


async def test_a_replay_that_fails_before_its_first_item_is_retried(
    tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    daemon = start_daemon(
        data_dir=tmp_path / "data", listen=[f"unix:{tmp_path}/late.sock"], start=False
    )
    async with TurnstoreClient(f"unix:{tmp_path}/late.sock", retry=PATIENT) as client:

        async def replay_all() -> list[ReplayItem]:
            return [item async for item in client.events.replay("late")]

        # Nothing listens yet: the replay's first attempt fails at once with
        # UnavailableError (the daemon takes far longer to start).
        replaying = asyncio.create_task(replay_all())
        await asyncio.to_thread(daemon.start)
        try:
            items = await asyncio.wait_for(replaying, 30)
        finally:
            assert daemon.stop() == 0
    assert items == [CaughtUp(0)]


async def test_a_replay_that_fails_after_an_item_is_not_retried(
    tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    daemon = start_daemon(data_dir=tmp_path / "data")
    try:
        async with TurnstoreClient(daemon.target, retry=PATIENT) as client:
            await client.events.append("broken", 1, AgentEventEnvelope.new({"type": "x"}))
            replay = client.events.replay("broken", follow=True)
            items = aiter(replay)
            assert isinstance(await anext(items), StoredEvent)
            await asyncio.to_thread(daemon.stop)
            await asyncio.to_thread(daemon.start)
            # A retry would replay from the start again (the event, then
            # CaughtUp): resuming is the cursor's job, so the replay fails.
            caught: BaseException | None = None
            try:
                async with asyncio.timeout(30):
                    async for item in items:
                        assert isinstance(item, CaughtUp), item
            except UnavailableError as error:
                caught = error
            assert caught is not None, "the replay ended without an error"
            # Resuming from its cursor gets nothing twice.
            resumed = client.events.replay("broken", replay.last_position, epoch=replay.epoch)
            assert [item async for item in resumed] == [CaughtUp(1)]
    finally:
        assert daemon.stop() == 0
