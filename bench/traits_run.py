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
            redis = _start_redis(runner, work / "traits-redis")
            if redis is not None:
                watch["redis"] = redis.pid
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
            _log("trait table: redis-server stopped")
        status = daemon.stop()
        _log(f"trait table: daemon stopped (exit status {status})")


def _start_redis(runner: Runner, work_dir: Path) -> RedisServer | None:
    """A running redis-server, or None (and a ``trait_redis`` error) when it cannot run."""
    server: RedisServer | None = None
    try:
        server = RedisServer(ensure_redis_installed(), work_dir)
        server.start()
    except Exception as error:  # the other sides are still worth measuring
        if server is not None:
            server.stop()
        runner.record("trait_redis", {"error": f"{type(error).__name__}: {error}"})
        _log(f"Redis for the trait table failed: {error}")
        return None
    _log(f"started {server.version} on 127.0.0.1:{server.port} for the trait table")
    return server


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

    def _row(
        self, row: str, scenario: str, params: dict[str, Any], *, modes: bool, sqlite: bool
    ) -> None:
        """One row, side by side: turnstore (each write mode if ``modes``), Redis, SQLite.

        Results are ``trait_<row>_<side>``; the turnstore side is ``stream``
        and ``unary``, or ``turnstore`` for a row whose calls do not write.
        """
        steps: list[tuple[str, str, dict[str, Any]]] = []
        if modes:
            for mode in WRITE_MODES:
                steps.append((mode, "trait", {"target": self.target, "write_mode": mode}))
        else:
            steps.append(("turnstore", "trait", {"target": self.target}))
        if self.redis is not None:
            steps.append(("redis", "redis-trait", {"port": self.redis.port}))
        if sqlite:
            steps.append(("sqlite", "sqlite-trait", {"path": self.sqlite}))
        for side, prefix, where in steps:
            self.runner.client(
                f"trait_{row}_{side}", f"{prefix}-{scenario}", {**where, **params}, self.watch
            )

    def run(self) -> None:
        """Every row, in the table's order (the read thread is loaded before it is read)."""
        profile = self.profile
        agent = {"events_per_turn": profile.trait_agent_turn_events, **self.timing}
        self._row("agent", "agent", agent, modes=True, sqlite=True)
        agents = {"concurrencies": list(profile.trait_concurrencies), **self.timing}
        self._row("agents", "agents", agents, modes=True, sqlite=True)
        load = {
            "thread": READ_THREAD,
            "events": profile.trait_read_events,
            "per_turn": profile.trait_read_turn_events,
        }
        self._row("load", "load", load, modes=False, sqlite=True)
        for how in READS:
            read = {
                "thread": READ_THREAD,
                "expected": profile.trait_read_events,
                "how": how,
                "duration": profile.duration,
                "min_repeats": profile.trait_read_min_repeats,
            }
            self._row(how, "read", read, modes=False, sqlite=True)
        follow = {"events": profile.trait_follow_events}
        self._row("follow", "follow", follow, modes=True, sqlite=False)
