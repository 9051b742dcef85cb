"""The benchmark's rows of two daemons sharing one PostgreSQL database, run tiny.

``make bench`` measures 64 agents split over two daemons and a follower on
one daemon of a writer on the other; these tests run the same scenarios
(``bench.traits_turnstore``) for a fraction of a second on two real daemons
started by the bench's own helper, and check what the numbers stand on:
every acknowledged append is stored once, whichever daemon took it, and the
follower on the other daemon receives every event. No timing is asserted.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.services import start_postgres_daemon
from bench.traits_turnstore import agents_split, follow_across
from tests.support.daemon import Daemon
from tests.support.postgres import PASSWORD, PostgresServer
from turnstore import TurnstoreClient


@pytest.fixture
def two_daemons(postgres_server: PostgresServer, tmp_path: Path) -> Iterator[list[Daemon]]:
    """Two daemons on the session's database, started as the bench starts them."""
    daemons: list[Daemon] = []
    try:
        for name in ("a", "b"):
            daemons.append(start_postgres_daemon(tmp_path / name, postgres_server.dsn))
        yield daemons
    finally:
        for daemon in daemons:
            assert daemon.stop() == 0, daemon.log_lines[-10:]


def test_the_bench_keeps_the_password_off_the_command_line(two_daemons: list[Daemon]) -> None:
    for daemon in two_daemons:
        assert all(PASSWORD not in argument for argument in daemon.command())
        assert "--postgres-dsn-file" in daemon.command()


async def test_agents_split_over_two_daemons_store_every_acknowledged_append(
    two_daemons: list[Daemon],
) -> None:
    a, b = two_daemons
    result = await agents_split([a.target, b.target], "stream", 4, duration=0.3, warmup=0.05)
    measured = result["by_concurrency"]["4"]
    assert result["daemons"] == 2
    assert measured["count"] > 0 and measured["rate_per_s"] > 0
    # Threads written through daemon B are read through daemon A: one database.
    async with TurnstoreClient(a.target) as client:
        counts = [
            await client.events.event_count(f"{result['thread_prefix']}-c4-a{agent}")
            for agent in range(4)
        ]
    assert all(count > 0 for count in counts), counts
    assert sum(counts) == measured["count"] + measured["warmup_count"]


async def test_a_follower_on_one_daemon_gets_every_event_written_on_the_other(
    two_daemons: list[Daemon],
) -> None:
    a, b = two_daemons
    result = await follow_across(a.target, b.target, "stream", 60)
    assert result["events"] == result["received"] == 60
    assert result["ack_to_follower"]["samples"] == 60
    assert result["write_mode"] == "stream"
