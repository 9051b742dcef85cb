"""How much work one run does: the full profile and the ``--quick`` one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """Sizes and durations of every scenario of a run.

    Timed loops run ``warmup`` seconds unmeasured, then ``duration`` seconds
    measured. ``replay_sizes`` are the events in the small and the large
    replayed thread (and Redis stream, and LMDB scan).
    """

    name: str
    duration: float
    warmup: float
    replay_sizes: tuple[int, int]
    live_tail_events: int
    snapshot_duration: float
    snapshot_min_ops: int
    concurrencies: tuple[int, ...] = (1, 16, 64)
    stream_items: tuple[tuple[int, int], ...] = ((100, 32), (1, 512))
    load_events_per_item: int = 1000
    snapshot_sizes: tuple[int, ...] = (4 * 1024, 400 * 1024, 4 * 1024 * 1024)
    redis_pipeline: int = 100
    xrange_page: int = 1000
    lmdb_puts_per_txn: tuple[int, ...] = (1, 100, 1000)
    # The user-facing ("trait") table: the thread read back, the agents' turns,
    # the concurrent agents, the live follower's events, the reads repeated.
    trait_read_events: int = 20_000
    trait_read_turn_events: int = 200
    trait_agent_turn_events: int = 20
    trait_concurrencies: tuple[int, ...] = (1, 8, 64)
    trait_follow_events: int = 2000
    trait_read_min_repeats: int = 5
    client_timeout: float = 900.0


FULL = Profile(
    name="full",
    duration=5.0,
    warmup=1.0,
    replay_sizes=(100_000, 1_000_000),
    live_tail_events=2000,
    snapshot_duration=2.0,
    snapshot_min_ops=5,
)

QUICK = Profile(
    name="quick",
    duration=0.5,
    warmup=0.1,
    replay_sizes=(10_000, 100_000),
    live_tail_events=200,
    snapshot_duration=0.3,
    snapshot_min_ops=3,
    client_timeout=120.0,
    trait_read_events=5_000,
    trait_follow_events=200,
    trait_read_min_repeats=3,
)
