"""The user-facing benchmark table's arithmetic and its SQLite baseline (no timing asserted).

The numbers ``make bench`` prints are only as good as the ratios drawn from
them and as the baselines they are compared with: these tests check that a
target passes and fails in the right direction, that a missing side is
"n/a" rather than a pass, that the write-mode fallback is marked, and that
the SQLite baseline behaves like the crate's store (finish barrier, turn
order, every event decoded), and that turnstore on PostgreSQL is set beside
the other sides, its shared-database rows beside its one daemon.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.memory import cpu_seconds, tree_cpu_seconds
from bench.profiles import QUICK
from bench.traits_common import TextDeltas, encode, load_turns
from bench.traits_report import evaluate_traits, render_traits
from bench.traits_sqlite import SqliteEvents, TurnFinished


def _results(stream_p50: float, redis_p50: float, *, fallback: bool = False) -> dict[str, Any]:
    agent = {"append": {"p50_ms": stream_p50, "p99_ms": 2.0}, "finish": {"p50_ms": 1.0}}
    return {
        "trait_agent_stream": {**agent, "write_mode_fallback": fallback},
        "trait_agent_unary": {"append": {"p50_ms": 2 * stream_p50, "p99_ms": 4.0}},
        "trait_agent_redis": {"append": {"p50_ms": redis_p50, "p99_ms": 1.0}},
        "trait_agents_stream": {"by_concurrency": {"64": {"rate_per_s": 30_000.0}}},
        "trait_agents_redis": {"by_concurrency": {"64": {"rate_per_s": 10_000.0}}},
        "trait_get_events_turnstore": {"rate_per_s": 400_000.0, "complete": True},
        "trait_get_events_redis": {"rate_per_s": 300_000.0, "complete": True},
        "trait_get_events_sqlite": {"rate_per_s": 500_000.0, "complete": True},
        "trait_follow_stream": {"ack_to_follower": {"p99_ms": 0.5}},
        "trait_follow_redis": {"ack_to_follower": {"p99_ms": -0.05}},
    }


def _target(targets: list[dict[str, Any]], starts: str, base: str) -> dict[str, Any]:
    (found,) = [t for t in targets if t["name"].startswith(starts) and t["name"].endswith(base)]
    return found


def test_latency_targets_pass_below_and_fail_above_the_threshold() -> None:
    _, fast = evaluate_traits(_results(0.6, 0.5), QUICK)
    _, slow = evaluate_traits(_results(1.0, 0.5), QUICK)
    assert _target(fast, "one agent: await append, p50", "Redis")["measured"] == pytest.approx(1.2)
    assert _target(fast, "one agent: await append, p50", "Redis")["pass"] is True
    assert _target(slow, "one agent: await append, p50", "Redis")["measured"] == pytest.approx(2.0)
    assert _target(slow, "one agent: await append, p50", "Redis")["pass"] is False
    # p99: 2.0 ms against Redis's 1.0 ms is exactly the 2x allowed.
    assert _target(fast, "one agent: await append, p99", "Redis")["pass"] is True


def test_rate_targets_and_missing_sides() -> None:
    derived, targets = evaluate_traits(_results(0.6, 0.5), QUICK)
    assert _target(targets, "64 agents", "Redis")["measured"] == pytest.approx(3.0)
    assert _target(targets, "64 agents", "Redis")["pass"] is True
    assert _target(targets, "get_events", "Redis")["pass"] is False  # 1.33x < 1.5x
    assert _target(targets, "get_events", "SQLite")["pass"] is False  # 0.8x < 1.0x
    # No replay was measured: its targets are unknown, not passed.
    assert _target(targets, "replay", "Redis")["pass"] is None
    assert derived["agents_64"]["versus"]["unary_vs_redis"] is None


def test_the_follower_is_compared_by_difference() -> None:
    derived, targets = evaluate_traits(_results(0.6, 0.5), QUICK)
    follow = _target(targets, "live follow: append ack -> follower, p99", "Redis")
    assert follow["unit"] == "ms"
    assert follow["measured"] == pytest.approx(0.55)
    assert follow["pass"] is False
    assert derived["follow_p99"]["compared_by"] == "difference"


def test_the_table_marks_a_client_without_write_modes() -> None:
    for fallback in (False, True):
        results = _results(0.6, 0.5, fallback=fallback)
        derived, _ = evaluate_traits(results, QUICK)
        table = render_traits(results, derived, QUICK, "Redis 7")
        assert ("turnstore stream*" in table) is fallback
        assert ("no write_mode option yet" in table) is fallback


def test_the_table_names_failed_and_short_steps() -> None:
    results = _results(0.6, 0.5)
    results["trait_agent_sqlite"] = {"error": "exit status 1: boom\nOSError: disk on fire"}
    results["trait_get_events_redis"]["complete"] = False
    derived, _ = evaluate_traits(results, QUICK)
    table = render_traits(results, derived, QUICK, "Redis 7")
    assert "ERROR trait_agent_sqlite: OSError: disk on fire" in table
    assert "INCOMPLETE trait_get_events_redis" in table


def test_text_deltas_are_about_200_bytes_of_json_with_unique_ids() -> None:
    envelopes = TextDeltas().batch(300)
    sizes = {len(encode(envelope)) for envelope in envelopes}
    assert min(sizes) >= 198 and max(sizes) <= 200
    assert len({envelope.event_id for envelope in envelopes}) == 300


async def test_the_sqlite_baseline_keeps_the_finish_barrier_and_turn_order(tmp_path: Path) -> None:
    store = SqliteEvents(str(tmp_path / "db" / "events.db"))
    try:
        deltas = TextDeltas()
        first, second, late = deltas.make(), deltas.make(), deltas.make()
        assert await store.append("t", 2, first) == 0
        assert await store.append("t", 1, second) == 0
        assert await store.append("t", 2, late) == 1
        await store.finish_turn("t", 2)
        with pytest.raises(TurnFinished):
            await store.append("t", 2, deltas.make())
        events = await store.get_events("t")
        assert [event["event_id"] for event in events] == [
            second.event_id,
            first.event_id,
            late.event_id,
        ]
        assert events[0] == second.to_json_dict()
        assert await store.replay("t") == 3
        assert await store.get_events("other") == []
    finally:
        store.close()


async def test_the_sqlite_replay_pages_through_every_event(tmp_path: Path) -> None:
    store = SqliteEvents(str(tmp_path / "events.db"))
    try:
        store.load("big", 2_345, 200)  # more than two pages of 1,000, across 12 turns
        assert store.count("big") == 2_345
        assert await store.replay("big") == 2_345
        assert len(await store.get_events("big")) == 2_345
    finally:
        store.close()


def test_load_turns_covers_the_thread() -> None:
    assert load_turns(450, 200) == [(1, 200), (2, 200), (3, 50)]
    assert sum(count for _, count in load_turns(20_000, 200)) == 20_000


def _with_postgres(results: dict[str, Any]) -> dict[str, Any]:
    """``_results`` plus a PostgreSQL side and the rows of two daemons on its database."""
    return {
        **results,
        "trait_agent_pg": {"append": {"p50_ms": 1.5, "p99_ms": 3.0}, "finish": {"p50_ms": 2.0}},
        "trait_agents_pg": {"by_concurrency": {"64": {"rate_per_s": 2_000.0}}},
        "trait_get_events_pg": {"rate_per_s": 100_000.0, "complete": True},
        "trait_follow_pg": {"ack_to_follower": {"p99_ms": 2.0}},
        "trait_agents_split_pg": {"by_concurrency": {"64": {"rate_per_s": 3_000.0}}},
        "trait_follow_across_pg": {"ack_to_follower": {"p99_ms": 3.5}},
        "trait_memory": {"pg_daemon_end_kib": {"RssAnon": 40_000}},
    }


def test_postgres_is_compared_with_lmdb_redis_and_sqlite() -> None:
    derived, targets = evaluate_traits(_with_postgres(_results(0.6, 0.5)), QUICK)
    postgres = derived["postgres"]
    append = postgres["append_p50"]
    assert append["value"] == 1.5
    assert append["versus"]["lmdb"] == pytest.approx(2.5)
    assert append["versus"]["redis"] == pytest.approx(3.0)
    assert append["versus"]["one_daemon"] is None
    get_events = postgres["get_events"]["versus"]
    assert get_events["lmdb"] == pytest.approx(0.25)
    assert get_events["sqlite"] == pytest.approx(0.2)
    follow = postgres["follow_p99"]
    assert follow["compared_by"] == "difference"
    assert follow["versus"]["redis"] == pytest.approx(2.05)
    assert follow["versus"]["sqlite"] is None  # SQLite has no follower
    # No PostgreSQL side has a target: the targets are LMDB's alone.
    assert not any("PostgreSQL" in target["name"] for target in targets)


def test_two_daemons_on_one_database_are_compared_with_one() -> None:
    derived, _ = evaluate_traits(_with_postgres(_results(0.6, 0.5)), QUICK)
    split = derived["postgres"]["agents_64_two_daemons"]
    assert split["value"] == 3_000.0
    assert split["versus"]["one_daemon"] == pytest.approx(1.5)
    assert split["versus"]["lmdb"] == pytest.approx(0.1)
    assert split["versus"]["redis"] == pytest.approx(0.3)
    across = derived["postgres"]["follow_across_p99"]
    assert across["versus"]["one_daemon"] == pytest.approx(1.5)  # 3.5 ms - 2.0 ms
    assert across["versus"]["lmdb"] == pytest.approx(3.0)
    assert derived["postgres"]["follow_across_p50"]["value"] is None  # not measured


def test_the_table_shows_postgres_or_says_it_did_not_run() -> None:
    results = _with_postgres(_results(0.6, 0.5))
    derived, _ = evaluate_traits(results, QUICK)
    table = render_traits(results, derived, QUICK, "Redis 7", "PostgreSQL 15.18")
    section = table[table.index("turnstore on PostgreSQL: PostgreSQL 15.18") :]
    split_row = next(line for line in section.splitlines() if "over two daemons" in line)
    assert "3,000" in split_row and "1.50x" in split_row
    memory_row = next(line for line in section.splitlines() if "anonymous" in line)
    assert "41.0" in memory_row  # 40,000 KiB
    absent = render_traits(results, derived, QUICK, "Redis 7", None)
    assert "turnstore on PostgreSQL: not run" in absent
    assert "over two daemons" not in absent


def test_a_tree_counts_the_cpu_of_live_descendants() -> None:
    # A grandchild (sh runs python, not exec'ing it: "; true") burns 0.3 s of
    # CPU, says so, and waits for its stdin to close: it is alive when measured.
    burn = (
        "import sys, time\n"
        "end = time.process_time() + 0.3\n"
        "while time.process_time() < end: pass\n"
        "print('burnt', flush=True)\n"
        "sys.stdin.read()\n"
    )
    mine_before = cpu_seconds(os.getpid())
    before = tree_cpu_seconds(os.getpid())
    with subprocess.Popen(
        ["sh", "-c", f'"{sys.executable}" -c "$0"; true', burn],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as shell:
        assert shell.stdout is not None and shell.stdin is not None
        assert shell.stdout.readline() == "burnt\n"
        during = tree_cpu_seconds(os.getpid())
        shell.stdin.close()
    assert shell.returncode == 0
    assert before is not None and during is not None and mine_before is not None
    assert during - before >= 0.25
    mine = cpu_seconds(os.getpid())
    assert mine is not None and mine - mine_before < 0.25  # the burn was not this process's
    after = tree_cpu_seconds(os.getpid())  # reaped now: counted in this process's cutime
    assert after is not None and after - before >= 0.25


def test_a_process_that_exited_and_was_reaped_has_no_tree() -> None:
    with subprocess.Popen([sys.executable, "-c", "pass"]) as gone:
        pid = gone.pid
    assert gone.returncode == 0
    assert tree_cpu_seconds(pid) is None
