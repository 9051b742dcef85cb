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
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bench import traits_rust
from bench.floors import bidi, open_lmdb
from bench.floors_report import evaluate_floors, floors
from bench.memory import cpu_seconds, tree_cpu_seconds
from bench.profiles import QUICK
from bench.run import Runner
from bench.traits_common import TextDeltas, encode, load_turns
from bench.traits_report import evaluate_traits, render_traits
from bench.traits_run import run_floors
from bench.traits_sqlite import SqliteEvents, TurnFinished
from tests.daemon import Daemon


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


# ---------------------------------------------------------------- the floors and the Rust rows

# The shortest settings: every floor's loop runs a few dozen operations at most.
TINY = replace(QUICK, duration=0.05, warmup=0.01, trait_concurrencies=(1, 4))


def test_every_floor_runs_in_its_own_process_and_is_measured(tmp_path: Path) -> None:
    # The bench's own path: bench.client processes, a grpc.aio server process per
    # bidi floor, files in the run's work directory.
    runner = Runner(TINY)
    run_floors(runner, tmp_path / "floors")
    failed = {name: result["error"] for name, result in runner.results.items() if "error" in result}
    assert failed == {}
    assert set(runner.results) == {
        "floor_bidi_bare",
        "floor_bidi_inline",
        "floor_bidi_thread",
        "floor_disk",
    }
    assert set(runner.results["floor_bidi_thread"]["by_concurrency"]) == {"1", "4"}
    measured = evaluate_floors(runner.results, TINY)["floors"]
    assert set(measured) == {floor.key for floor in floors(TINY)}
    assert "bidi_thread_4" in measured
    for key, floor in measured.items():
        for stat in ("p50_ms", "p99_ms", "rate_per_s"):
            assert floor[stat] is not None and floor[stat] > 0, (key, stat, floor)
        assert floor["p99_ms"] >= floor["p50_ms"]
    # The synced commits really wrote: the files are there and hold data.
    assert (tmp_path / "floors" / "appended").stat().st_size > 0
    assert (tmp_path / "floors" / "lmdb-inline" / "data.mdb").exists()
    assert (tmp_path / "floors" / "lmdb-thread" / "data.mdb").exists()


def test_the_writer_thread_floor_commits_every_message_of_concurrent_streams(
    tmp_path: Path,
) -> None:
    # Its group commit must not drop or double a message: the floor of N agents
    # is only a floor if every echo waited for its own message's commit.
    result = bidi("thread", str(tmp_path), [8], 0.1, 0.01)
    sent = result["by_concurrency"]["8"]["count"] + result["by_concurrency"]["8"]["warmup_count"]
    env = open_lmdb(tmp_path / "lmdb-thread")
    try:
        assert env.stat()["entries"] == sent
    finally:
        env.close()


def _floored(rust: bool) -> dict[str, Any]:
    def at(p50: float, p99: float, rate: float) -> dict[str, float]:
        return {"p50_ms": p50, "p99_ms": p99, "rate_per_s": rate}

    results = _results(1.2, 0.5)
    results["trait_agent_stream"]["finish"]["p50_ms"] = 1.6
    results["trait_agents_stream"]["by_concurrency"].update(
        {"1": at(1.0, 2.0, 900.0), "4": at(2.0, 3.0, 2_000.0)}
    )
    results["floor_bidi_bare"] = {"by_concurrency": {"1": at(0.25, 0.4, 4_000.0)}}
    results["floor_bidi_inline"] = {"by_concurrency": {"1": at(0.6, 0.9, 1_500.0)}}
    results["floor_bidi_thread"] = {
        "by_concurrency": {"1": at(0.8, 1.0, 1_250.0), "4": at(1.0, 2.0, 4_000.0)}
    }
    results["floor_disk"] = {
        "lmdb_sync": at(0.3, 0.5, 3_000.0),
        "lmdb_nometasync": at(0.15, 0.3, 6_000.0),
        "pwrite_fdatasync": at(0.1, 0.2, 9_000.0),
        "append_fdatasync": at(0.16, 0.3, 6_000.0),
    }
    if rust:
        results["trait_rust"] = {
            "agent": {"append": at(1.0, 1.5, 1_000.0), "finish": {"p50_ms": 1.0}},
            "by_concurrency": {"1": at(0.9, 1.5, 1_000.0), "4": at(1.0, 2.0, 3_000.0)},
        }
    else:
        results["trait_rust"] = {"error": "RuntimeError: cargo is not on PATH"}
    return results


def test_each_user_row_is_a_ratio_to_its_floor() -> None:
    derived, _ = evaluate_traits(_floored(rust=True), TINY)
    pairs = derived["floors"]["pairs"]
    append = pairs["append_p50"]
    assert append["floor"] == "bidi_thread" and append["floor_value"] == 0.8
    assert append["python_vs_floor"] == pytest.approx(1.5)  # 1.2 ms / 0.8 ms
    assert append["rust_vs_floor"] == pytest.approx(1.25)
    assert pairs["append_p99"]["python_vs_floor"] == pytest.approx(2.0)  # p99 against p99
    assert pairs["finish_p50"]["python_vs_floor"] == pytest.approx(2.0)
    # N agents against the writer-thread floor with N streams in flight.
    assert pairs["agents_4"]["floor"] == "bidi_thread_4"
    assert pairs["agents_4"]["python_vs_floor"] == pytest.approx(0.5)
    assert pairs["agents_4"]["rust_vs_floor"] == pytest.approx(0.75)
    assert pairs["agents_1"]["floor"] == "bidi_thread"
    table = render_traits(_floored(rust=True), derived, TINY, "Redis 7")
    row = next(
        line for line in table.splitlines() if "await append, p50" in line and "1.50x" in line
    )
    assert "1.25x" in row and "writer thread" in row
    floor_row = next(line for line in table.splitlines() if "preallocated" in line)
    assert floor_row.split()[-3:] == ["100", "200", "9,000"]  # p50 and p99 in us, ops/s


def test_a_missing_floor_or_rust_side_is_unknown_not_a_ratio() -> None:
    results = _floored(rust=False)
    results["floor_bidi_thread"] = {"error": "exit status 1: boom\nRuntimeError: no server"}
    derived, _ = evaluate_traits(results, TINY)
    append = derived["floors"]["pairs"]["append_p50"]
    assert append["rust"] is None and append["rust_vs_floor"] is None
    assert append["floor_value"] is None and append["python_vs_floor"] is None
    assert derived["floors"]["floors"]["lmdb_sync"]["p50_ms"] == 0.3
    table = render_traits(results, derived, TINY, "Redis 7")
    assert "ERROR floor_bidi_thread: RuntimeError: no server" in table
    assert "ERROR trait_rust: RuntimeError: cargo is not on PATH" in table
    assert "- not run" in table


@pytest.mark.timeout(traits_rust.BUILD_TIMEOUT + 120)
def test_the_rust_rows_run_against_a_real_daemon(daemon: Daemon) -> None:
    # The bench's own build (the debug profile here: a cold release build
    # takes minutes on 2 cores, and this checks the rows, not their speed)
    # and its own reading of the example's output.
    binary = traits_rust.build(release=False)
    result = traits_rust.agents(
        str(binary),
        daemon.target,
        events_per_turn=3,
        concurrencies=[1, 4],
        duration=0.1,
        warmup=0.02,
        thread_prefix=f"bench-rust-{uuid.uuid4().hex[:8]}",
    )
    append = result["agent"]["append"]
    assert append["count"] > 0 and append["p50_ms"] > 0 and append["rate_per_s"] > 0
    assert result["agent"]["finish"]["samples"] >= 1
    assert set(result["by_concurrency"]) == {"1", "4"}
    for each in result["by_concurrency"].values():
        assert each["count"] > 0 and each["rate_per_s"] > 0 and each["p50_ms"] > 0
    derived = evaluate_floors({"trait_rust": result}, TINY)
    assert derived["pairs"]["append_p50"]["rust"] == append["p50_ms"]
