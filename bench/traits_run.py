"""The user-facing ("trait") table's steps, run first by ``bench.run``.

One fresh turnstore daemon, one fresh redis-server and one fresh PostgreSQL
cluster with a turnstore daemon on it serve only these steps; SQLite runs
inside each client process on a file in the work directory. Each row is
measured side by side, one client process per side (turnstore on LMDB in
``stream`` and ``unary`` write mode, turnstore on PostgreSQL in ``stream``
mode, Redis, SQLite), so a disturbance that drifts over the run touches
every side of a row alike. Result names are ``trait_<row>_<side>``; the
PostgreSQL side is ``pg``. Last come the rows of two daemons sharing the
PostgreSQL database (``trait_agents_split_pg``, ``trait_follow_across_pg``),
with a second daemon started for them alone. Then the Rust client's rows on
the LMDB daemon (``trait_rust``, its example built in release mode before
any daemon starts) and the floors under the append path (``floor_*``, see
``bench.floors``), which the report sets beside the user rows.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bench import traits_rust
from bench.floors import MODES as FLOOR_MODES
from bench.memory import read_status, tree_cpu_seconds
from bench.services import (
    RedisServer,
    ensure_redis_installed,
    start_daemon,
    start_postgres_daemon,
)
from tests.daemon import Daemon
from tests.postgres import PostgresServer, start_postgres

if TYPE_CHECKING:
    from bench.run import Runner

WRITE_MODES: Final = ("stream", "unary")
READS: Final = ("get_events", "replay")
READ_THREAD: Final = "trait-read"


def _log(message: str) -> None:
    """Progress, on stderr (as ``bench.run.log``)."""
    print(message, file=sys.stderr, flush=True)


def run_traits(
    runner: Runner,
    work: Path,
    with_redis: bool,
    with_postgres: bool = True,
    with_rust: bool = True,
) -> dict[str, str | None]:
    """Every row of the trait table, then its floors; returns the Redis and PostgreSQL
    version lines.

    A version is None for a server that was not run (skipped, or failed to
    start: then its ``trait_redis`` / ``trait_postgres`` result is the error).
    The Rust rows need cargo; a failed build is the ``trait_rust`` result.
    """
    rust_binary = _build_rust(runner) if with_rust else None
    daemon = start_daemon(work / "traits-turnstore")
    redis: RedisServer | None = None
    postgres: _Postgres | None = None
    try:
        assert daemon.process is not None
        watch = {"daemon": daemon.process.pid}
        at_start = read_status(daemon.process.pid)
        if with_redis:
            redis = _start_redis(runner, work / "traits-redis")
            if redis is not None:
                watch["redis"] = redis.pid
        if with_postgres:
            postgres = _Postgres.start(runner, work / "traits-postgres")
            if postgres is not None:
                watch.update(postgres.watch())
        sqlite = work / "traits-sqlite" / "events.db"
        _Rows(runner, daemon.target, redis, postgres, sqlite, watch).run()
        if rust_binary is not None:
            _rust_rows(runner, rust_binary, daemon.target, watch)
        run_floors(runner, work / "floors")
        runner.record(
            "trait_memory",
            {
                "daemon_start_kib": at_start,
                "daemon_end_kib": read_status(daemon.process.pid),
                "redis_end_kib": read_status(redis.pid) if redis is not None else {},
                "pg_daemon_end_kib": postgres.daemon_status() if postgres is not None else {},
            },
        )
        return {
            "redis": redis.version if redis is not None else None,
            "postgres": postgres.version if postgres is not None else None,
        }
    finally:
        if redis is not None:
            redis.stop()
            _log("trait table: redis-server stopped")
        if postgres is not None:
            postgres.stop(runner)
        status = daemon.stop()
        _log(f"trait table: daemon stopped (exit status {status})")


def _build_rust(runner: Runner) -> Path | None:
    """The Rust bench example, built in release mode; None (and a ``trait_rust`` error)
    when it cannot be built."""
    _log("building the Rust client's bench example (cargo build --release)")
    try:
        return traits_rust.build()
    except Exception as error:  # the other sides are still worth measuring
        runner.record("trait_rust", {"error": f"{type(error).__name__}: {error}"})
        _log(f"the Rust bench example failed to build: {error}")
        return None


def _rust_rows(runner: Runner, binary: Path, target: str, watch: dict[str, int]) -> None:
    """The Rust client's one agent and N agents, on the table's LMDB daemon."""
    profile = runner.profile
    params = {
        "binary": str(binary),
        "target": target,
        "events_per_turn": profile.trait_agent_turn_events,
        "concurrencies": list(profile.trait_concurrencies),
        "duration": profile.duration,
        "warmup": profile.warmup,
        "thread_prefix": f"trait-rust-{uuid.uuid4().hex[:10]}",
    }
    runner.client("trait_rust", "rust-agents", params, watch)


def run_floors(runner: Runner, directory: Path) -> None:
    """The floors under the append path (``bench.floors``), files in ``directory``.

    Results: ``floor_bidi_<mode>`` (the writer-thread mode at every
    concurrency of the agents row, the others at 1) and ``floor_disk``.
    """
    profile = runner.profile
    timing = {"duration": profile.duration, "warmup": profile.warmup}
    for mode in FLOOR_MODES:
        concurrencies = list(profile.trait_concurrencies) if mode == "thread" else [1]
        params = {"mode": mode, "directory": str(directory), "concurrencies": concurrencies}
        runner.client(f"floor_bidi_{mode}", "floor-bidi", {**params, **timing}, {})
    runner.client("floor_disk", "floor-disk", {"directory": str(directory), **timing}, {})


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


class _Postgres:
    """A fresh PostgreSQL cluster and a turnstore daemon on its database.

    PostgreSQL's processes are not children of this run (``pg_ctl`` detaches
    the postmaster), so the CPU they used is handed to the runner when they
    stop (``Runner.foreign_cpu_s``), lest the run count it as other load.
    """

    def __init__(self, server: PostgresServer, daemon: Daemon, work_dir: Path) -> None:
        self.server = server
        self.daemon = daemon
        self.work_dir = work_dir
        self.version = server.version()
        self.postmaster = server.pid
        self._cpu_at_start = tree_cpu_seconds(self.postmaster) or 0.0

    @classmethod
    def start(cls, runner: Runner, work_dir: Path) -> _Postgres | None:
        """Both running, or None (and a ``trait_postgres`` error) when either cannot start."""
        server: PostgresServer | None = None
        daemon: Daemon | None = None
        try:
            server = start_postgres()
            daemon = start_postgres_daemon(work_dir / "daemon-a", server.dsn)
            started = cls(server, daemon, work_dir)
        except Exception as error:  # the other sides are still worth measuring
            if daemon is not None:
                daemon.stop()
            if server is not None:
                server.remove()
            runner.record("trait_postgres", {"error": f"{type(error).__name__}: {error}"})
            _log(f"PostgreSQL for the trait table failed: {error}")
            return None
        _log(
            f"started {started.version} on 127.0.0.1:{server.port} and a turnstore daemon "
            "on it for the trait table"
        )
        return started

    @property
    def target(self) -> str:
        """The first daemon's address."""
        return self.daemon.target

    def watch(self) -> dict[str, int]:
        """The processes to sample: the daemon, and the postmaster (with its backends)."""
        assert self.daemon.process is not None
        return {"pg_daemon": self.daemon.process.pid, "postgres": self.postmaster}

    def daemon_status(self) -> dict[str, int]:
        """The first daemon's memory now (KiB)."""
        assert self.daemon.process is not None
        return read_status(self.daemon.process.pid)

    def second_daemon(self) -> Daemon:
        """Another daemon on the same database (the caller stops it)."""
        return start_postgres_daemon(self.work_dir / "daemon-b", self.server.dsn)

    def stop(self, runner: Runner) -> None:
        """Stop the daemon, then PostgreSQL, and remove the cluster."""
        status = self.daemon.stop()
        _log(f"trait table: PostgreSQL daemon stopped (exit status {status})")
        used = tree_cpu_seconds(self.postmaster)
        if used is not None:
            runner.foreign_cpu_s += used - self._cpu_at_start
        self.server.remove()
        _log("trait table: PostgreSQL stopped and removed")


class _Rows:
    """The steps of each row, side by side."""

    def __init__(
        self,
        runner: Runner,
        target: str,
        redis: RedisServer | None,
        postgres: _Postgres | None,
        sqlite_path: Path,
        watch: dict[str, int],
    ) -> None:
        self.runner = runner
        self.profile = runner.profile
        self.target = target
        self.redis = redis
        self.postgres = postgres
        self.sqlite = str(sqlite_path)
        self.watch = watch
        self.timing = {"duration": self.profile.duration, "warmup": self.profile.warmup}

    def _row(
        self, row: str, scenario: str, params: dict[str, Any], *, modes: bool, sqlite: bool
    ) -> None:
        """One row, side by side: turnstore (each write mode if ``modes``), Redis, SQLite.

        Results are ``trait_<row>_<side>``; the turnstore side is ``stream``
        and ``unary``, or ``turnstore`` for a row whose calls do not write;
        the PostgreSQL side is ``pg`` (stream writes, the client's default).
        """
        steps: list[tuple[str, str, dict[str, Any]]] = []
        if modes:
            for mode in WRITE_MODES:
                steps.append((mode, "trait", {"target": self.target, "write_mode": mode}))
        else:
            steps.append(("turnstore", "trait", {"target": self.target}))
        if self.postgres is not None:
            where: dict[str, Any] = {"target": self.postgres.target}
            steps.append(("pg", "trait", {**where, "write_mode": "stream"} if modes else where))
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
        if self.postgres is not None:
            self._shared_database(self.postgres)

    def _shared_database(self, postgres: _Postgres) -> None:
        """Two daemons on the one database: the most agents split over them, and a follower
        on the second daemon of a writer on the first (woken through LISTEN/NOTIFY)."""
        try:
            second = postgres.second_daemon()
        except Exception as error:  # the rows before are still worth reporting
            self.runner.record("trait_fleet", {"error": f"{type(error).__name__}: {error}"})
            _log(f"a second daemon on PostgreSQL failed: {error}")
            return
        try:
            assert second.process is not None
            watch = {**self.watch, "pg_daemon_b": second.process.pid}
            split = {
                "targets": [postgres.target, second.target],
                "write_mode": "stream",
                "concurrency": max(self.profile.trait_concurrencies),
                **self.timing,
            }
            self.runner.client("trait_agents_split_pg", "trait-agents-split", split, watch)
            across = {
                "writer_target": postgres.target,
                "follower_target": second.target,
                "write_mode": "stream",
                "events": self.profile.trait_follow_events,
            }
            self.runner.client("trait_follow_across_pg", "trait-follow-across", across, watch)
        finally:
            status = second.stop()
            _log(f"trait table: second PostgreSQL daemon stopped (exit status {status})")
