"""The user-facing ("trait") table's steps, run first by ``bench.run``.

One fresh turnstore daemon and one fresh redis-server serve only these
steps; SQLite runs inside each client process on a file in the work
directory. Each row is measured side by side, one client process per side
(turnstore in ``stream`` and ``unary`` write mode, Redis, SQLite), so a
disturbance that drifts over the run touches every side of a row alike.
Result names are ``trait_<row>_<side>``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bench.memory import read_status
from bench.services import RedisServer, ensure_redis_installed, start_daemon

if TYPE_CHECKING:
    from bench.run import Runner

WRITE_MODES: Final = ("stream", "unary")
READS: Final = ("get_events", "replay")
READ_THREAD: Final = "trait-read"


def _log(message: str) -> None:
    """Progress, on stderr (as ``bench.run.log``)."""
    print(message, file=sys.stderr, flush=True)


def run_traits(runner: Runner, work: Path, with_redis: bool) -> str | None:
    """Every row of the trait table; returns the Redis version line (None if not run)."""
    daemon = start_daemon(work / "traits-turnstore")
    redis: RedisServer | None = None
    try:
        assert daemon.process is not None
        watch = {"daemon": daemon.process.pid}
        at_start = read_status(daemon.process.pid)
        if with_redis:
            try:
                redis = RedisServer(ensure_redis_installed(), work / "traits-redis")
                redis.start()
                watch["redis"] = redis.pid
                _log(f"started {redis.version} on 127.0.0.1:{redis.port} for the trait table")
            except Exception as error:  # the other sides are still worth measuring
                runner.record("trait_redis", {"error": f"{type(error).__name__}: {error}"})
                _log(f"Redis for the trait table failed: {error}")
                redis = None
        _Rows(runner, daemon.target, redis, work / "traits-sqlite" / "events.db", watch).run()
        runner.record(
            "trait_memory",
            {
                "daemon_start_kib": at_start,
                "daemon_end_kib": read_status(daemon.process.pid),
                "redis_end_kib": read_status(redis.pid) if redis is not None else {},
            },
        )
        return redis.version if redis is not None else None
    finally:
        if redis is not None:
            redis.stop()
        status = daemon.stop()
        _log(f"trait table: daemon stopped (exit status {status}), redis-server stopped")


class _Rows:
    """The steps of each row, side by side."""

    def __init__(
        self,
        runner: Runner,
        target: str,
        redis: RedisServer | None,
        sqlite_path: Path,
        watch: dict[str, int],
    ) -> None:
        self.runner = runner
        self.profile = runner.profile
        self.target = target
        self.redis = redis
        self.sqlite = str(sqlite_path)
        self.watch = watch
        self.timing = {"duration": self.profile.duration, "warmup": self.profile.warmup}

    def _client(self, name: str, scenario: str, params: dict[str, Any]) -> None:
        self.runner.client(name, scenario, params, self.watch)

    def _sides(self, row: str, scenario: str, params: dict[str, Any], modes: bool) -> None:
        """One row's turnstore step(s), then Redis's, then SQLite's (``sqlite`` only if given)."""
        if modes:
            for mode in WRITE_MODES:
                turnstore = {"target": self.target, "write_mode": mode, **params}
                self._client(f"trait_{row}_{mode}", f"trait-{scenario}", turnstore)
        else:
            self._client(
                f"trait_{row}_turnstore", f"trait-{scenario}", {"target": self.target, **params}
            )
        if self.redis is not None:
            self._client(
                f"trait_{row}_redis", f"redis-trait-{scenario}", {"port": self.redis.port, **params}
            )

    def _sqlite(self, row: str, scenario: str, params: dict[str, Any]) -> None:
        self._client(
            f"trait_{row}_sqlite", f"sqlite-trait-{scenario}", {"path": self.sqlite, **params}
        )

    def run(self) -> None:
        profile = self.profile
        agent = {"events_per_turn": profile.trait_agent_turn_events, **self.timing}
        self._sides("agent", "agent", agent, modes=True)
        self._sqlite("agent", "agent", agent)
        agents = {"concurrencies": list(profile.trait_concurrencies), **self.timing}
        self._sides("agents", "agents", agents, modes=True)
        self._sqlite("agents", "agents", agents)
        load = {
            "thread": READ_THREAD,
            "events": profile.trait_read_events,
            "per_turn": profile.trait_read_turn_events,
        }
        self._sides("load", "load", load, modes=False)
        self._sqlite("load", "load", load)
        for how in READS:
            read = {
                "thread": READ_THREAD,
                "expected": profile.trait_read_events,
                "how": how,
                "duration": profile.duration,
                "min_repeats": profile.trait_read_min_repeats,
            }
            self._sides(how, "read", read, modes=False)
            self._sqlite(how, "read", read)
        self._sides("follow", "follow", {"events": profile.trait_follow_events}, modes=True)
