"""The orchestrator: ``python -m bench.run [--quick]`` (``make bench``).

It starts the turnstore daemon and then a Redis server (and, for the
user-facing table, a PostgreSQL cluster with daemons on it), each in its own
process on temporary directories; spawns one ``python -m bench.client``
load-generator process per scenario; samples the server's memory while each
runs; and finally prints a table and writes the whole run as JSON to
``bench/results/<timestamp>.json`` and ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final, TypeVar

from bench.common import Result
from bench.memory import PeakSampler, machine_busy_seconds, read_status
from bench.profiles import FULL, QUICK, Profile
from bench.report import evaluate, render
from bench.services import RedisServer, ensure_redis_installed, start_daemon
from bench.traits_run import run_traits
from tests.daemon import Daemon

ROOT: Final = Path(__file__).resolve().parent.parent
RESULTS_DIR: Final = ROOT / "bench" / "results"

# The Python packages whose versions a run records.
PACKAGES: Final = (
    "turnstore", "grpcio", "protobuf", "lmdb", "redis", "hiredis", "orjson", "psycopg"
)  # fmt: skip
T = TypeVar("T")
# Other processes' share of the CPU under which the machine counts as quiet.
QUIET: Final = 0.05


def log(message: str) -> None:
    """Progress, on stderr."""
    print(message, file=sys.stderr, flush=True)


class Runner:
    """Runs scenarios in client processes and keeps their results by name."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.results: dict[str, Result] = {}
        self.started = time.perf_counter()
        # CPU seconds of servers this process does not reap (PostgreSQL's
        # detached postmaster): this run's load, not another's.
        self.foreign_cpu_s = 0.0

    def record(self, name: str, result: Result) -> Result:
        """Keep a result (an ``{"error": ...}`` for a step that failed)."""
        self.results[name] = result
        return result

    def _outcome(self, completed: subprocess.CompletedProcess[str] | None) -> Result:
        """The client's JSON result, or ``{"error": ...}`` with the end of its stderr."""
        if completed is None:
            return {"error": f"timed out after {self.profile.client_timeout} s"}
        tail = "\n".join(completed.stderr.strip().splitlines()[-8:])
        if completed.returncode != 0 or not completed.stdout.strip():
            return {"error": f"exit status {completed.returncode}: {tail}"}
        try:
            result: Result = json.loads(completed.stdout.strip().splitlines()[-1])
        except ValueError:
            return {"error": f"unreadable output {completed.stdout[-200:]!r}: {tail}"}
        return result

    def client(
        self, name: str, scenario: str, params: dict[str, Any], watch: dict[str, int]
    ) -> Result:
        """Run ``scenario`` in a ``bench.client`` process; sample each ``watch`` pid's memory.

        A failing client becomes ``{"error": ...}`` and the run goes on.
        """
        log(f"[{time.perf_counter() - self.started:6.1f}s] {name}")
        command = [sys.executable, "-m", "bench.client", scenario, "--params", json.dumps(params)]
        samplers = {label: PeakSampler(pid) for label, pid in watch.items()}
        started = time.perf_counter()
        busy_before, own_before = machine_busy_seconds(), own_cpu_seconds()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with contextlib.ExitStack() as stack:
            for sampler in samplers.values():
                stack.enter_context(sampler)
            try:
                completed = subprocess.run(
                    command,
                    cwd=ROOT,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=self.profile.client_timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                completed = None
        result = self._outcome(completed)
        if "error" in result:
            log(f"    FAILED: {result['error']}")
        wall = result["wall_s"] = time.perf_counter() - started
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        result["client_cpu_s"] = (children_after.ru_utime - children_before.ru_utime) + (
            children_after.ru_stime - children_before.ru_stime
        )
        result["memory"] = {label: sampler.result for label, sampler in samplers.items()}
        # Everything else the machine ran meanwhile: load that competed with this step.
        servers = sum(sampler.result.get("cpu_s") or 0.0 for sampler in samplers.values())
        ours = own_cpu_seconds() - own_before + servers
        other = max(0.0, machine_busy_seconds() - busy_before - ours)
        result["other_cpu_share"] = other / (wall * (os.cpu_count() or 1))
        return self.record(name, result)


def step(runner: Runner, name: str, body: Callable[[], T]) -> T | None:
    """Run one system's scenarios; if its server cannot be run, record why and go on."""
    try:
        return body()
    except Exception as error:  # the other systems are still worth measuring
        runner.record(name, {"error": f"{type(error).__name__}: {error}"})
        log(f"{name} failed: {type(error).__name__}: {error}")
        return None


def run_turnstore(runner: Runner, work: Path) -> None:
    """Every turnstore scenario against one daemon."""
    profile = runner.profile
    daemon = start_daemon(work / "turnstore")
    try:
        assert daemon.process is not None
        pid = daemon.process.pid
        watch = {"daemon": pid}
        target = daemon.target
        at_start = read_status(pid)
        timing = {"duration": profile.duration, "warmup": profile.warmup}
        concurrencies = list(profile.concurrencies)
        runner.client(
            "noop", "noop", {"target": target, "concurrencies": concurrencies, **timing}, watch
        )
        runner.client(
            "unary_append",
            "unary-append",
            {"target": target, "concurrencies": concurrencies, **timing},
            watch,
        )
        for per_item, window in profile.stream_items:
            params = {"target": target, "events_per_item": per_item, "window": window, **timing}
            runner.client(f"stream_append_{per_item}", "stream-append", params, watch)
        for size in profile.replay_sizes:
            thread = f"bench-replay-{size}"
            load = {"target": target, "thread": thread, "events": size}
            load["events_per_item"] = profile.load_events_per_item
            runner.client(f"load_{size}", "load-thread", load, watch)
            read = {"target": target, "thread": thread, "expected": size}
            runner.client(f"replay_client_{size}", "replay-client", read, watch)
            runner.client(f"replay_raw_{size}", "replay-raw", read, watch)
            decode = {**read, "decode": True}
            runner.client(f"replay_decoded_{size}", "replay-client", decode, watch)
        runner.client(
            "live_tail", "live-tail", {"target": target, "events": profile.live_tail_events}, watch
        )
        runner.client(
            "snapshots",
            "snapshots",
            {
                "target": target,
                "sizes": list(profile.snapshot_sizes),
                "duration": profile.snapshot_duration,
                "min_ops": profile.snapshot_min_ops,
            },
            watch,
        )
        runner.record("daemon_memory", {"start_kib": at_start, "end_kib": read_status(pid)})
    finally:
        status = daemon.stop()
        log(f"turnstore daemon stopped (exit status {status})")


def run_sse(runner: Runner, work: Path) -> None:
    """The browser's path: follow latency over Server-Sent Events, and 1,000 SSE followers."""
    quick = runner.profile.live_tail_events < 1000
    sse_dir = work / "turnstore-sse"
    daemon = Daemon(
        sse_dir / "data",
        listen=[f"unix:{sse_dir}/s.sock"],
        extra_args=["--http-listen", "127.0.0.1:0"],
    )
    first = daemon.start()
    try:
        assert daemon.process is not None
        watch = {"daemon": daemon.process.pid}
        base = {"http": first["http"], "target": daemon.target}
        tail = {**base, "events": runner.profile.live_tail_events}
        runner.client("sse_live_tail", "sse-live-tail", tail, watch)
        followers = {**base, "followers": 100 if quick else 1000, "events": 20}
        runner.client("sse_followers", "sse-followers", followers, watch)
    finally:
        status = daemon.stop()
        log(f"SSE daemon stopped (exit status {status})")


def run_redis(runner: Runner, work: Path) -> str:
    """Every Redis scenario against one redis-server; returns its version line."""
    profile = runner.profile
    server = RedisServer(ensure_redis_installed(), work / "redis")
    try:
        server.start()
        log(f"started {server.version} on 127.0.0.1:{server.port}")
        watch = {"redis": server.pid}
        for mode in ("sync", "async"):
            params = {
                "port": server.port,
                "mode": mode,
                "duration": profile.duration,
                "warmup": profile.warmup,
                "pipeline": profile.redis_pipeline,
            }
            runner.client(f"redis_writes_{mode}", "redis-writes", params, watch)
        for size in profile.replay_sizes:
            stream = f"bench-stream-{size}"
            load = {"port": server.port, "stream": stream, "entries": size}
            runner.client(f"redis_load_{size}", "redis-load", load, watch)
            for mode in ("sync", "async"):
                params = {
                    "port": server.port,
                    "mode": mode,
                    "stream": stream,
                    "page": profile.xrange_page,
                    "expected": size,
                }
                runner.client(f"redis_xrange_{size}_{mode}", "redis-xrange", params, watch)
        return server.version
    finally:
        server.stop()
        log("redis-server stopped")


def run_lmdb(runner: Runner, work: Path) -> None:
    """The raw LMDB scenarios, in one client process."""
    profile = runner.profile
    params = {
        "path": str(work / "lmdb"),
        "per_txn": list(profile.lmdb_puts_per_txn),
        "duration": profile.duration,
        "warmup": profile.warmup,
        "scans": list(profile.replay_sizes),
    }
    runner.client("lmdb", "lmdb", params, {})


def run_others(runner: Runner, work: Path, skip_redis: bool, meta: Result) -> None:
    """The rows below the user-facing table: turnstore, Redis and raw LMDB."""
    step(runner, "turnstore", lambda: run_turnstore(runner, work))
    step(runner, "sse", lambda: run_sse(runner, work))
    if skip_redis:
        log("skipping Redis (--skip-redis)")
    else:
        meta["redis_server"] = step(runner, "redis", lambda: run_redis(runner, work))
    run_lmdb(runner, work)


def _command_output(command: list[str]) -> str:
    try:
        return subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def machine_info() -> Result:
    """What ran the benchmark: host, versions, and the code's commit (read-only git)."""
    dirty = _command_output(["git", "--no-optional-locks", "status", "--porcelain"])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_kib": _mem_total_kib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "git_commit": _command_output(["git", "rev-parse", "HEAD"]),
        "git_uncommitted_files": len(dirty.splitlines()),
    }


def _mem_total_kib() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 0


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children reaped so far."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def other_cpu(
    busy_before: float, own_before: float, wall_s: float, foreign_s: float = 0.0
) -> Result:
    """CPU the machine spent on processes other than this run's, since ``busy_before``.

    The machine's busy time minus this process's and its reaped children's
    (the clients, the daemons, redis-server) and ``foreign_s``, what this
    run's servers that are not its children used (PostgreSQL): other load on
    the machine that competed with the benchmark. ``share`` is of all CPUs
    over the run.
    """
    own = own_cpu_seconds() - own_before + foreign_s
    other = max(0.0, machine_busy_seconds() - busy_before - own)
    return {"cpu_s": other, "share": other / (wall_s * (os.cpu_count() or 1))}


def wait_until_quiet(max_wait: float, window: float = 3.0) -> float:
    """Wait (up to ``max_wait`` s) until other processes use < 5% of the CPU over ``window`` s.

    Returns the last share measured.
    """
    deadline = time.monotonic() + max_wait
    while True:
        busy, own = machine_busy_seconds(), own_cpu_seconds()
        time.sleep(window)
        other = machine_busy_seconds() - busy - (own_cpu_seconds() - own)
        share = max(0.0, other) / (window * (os.cpu_count() or 1))
        if share < QUIET or time.monotonic() >= deadline:
            return share
        log(f"other processes use {share:.0%} of the CPU; waiting for a quiet machine")


def write_results(report: Result, directory: Path, stamp: str) -> Path:
    """Write ``<stamp>.json`` and ``latest.json`` (each via a ``.tmp`` file and a rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    path = directory / f"{stamp}.json"
    for destination in (path, directory / "latest.json"):
        temporary = destination.with_name(destination.name + ".tmp")
        temporary.write_text(text)
        os.replace(temporary, destination)
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the whole benchmark; exit status 0 even when targets fail, 1 if a step failed."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10x less work: a smoke run")
    parser.add_argument("--skip-redis", action="store_true", help="do not run Redis")
    parser.add_argument(
        "--skip-postgres",
        action="store_true",
        help="do not run turnstore on PostgreSQL in the user-facing table",
    )
    parser.add_argument(
        "--skip-rust",
        action="store_true",
        help="do not build and run the Rust client's rows (they need cargo)",
    )
    parser.add_argument(
        "--traits-only",
        action="store_true",
        help="only the user-facing table (not the batched, raw and snapshot rows)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for other processes to leave the CPU idle",
    )
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    machine = machine_info()
    quiet = wait_until_quiet(args.wait_quiet) if args.wait_quiet > 0 else None
    started_at = datetime.now(UTC)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "")
    stamp += "-traits" if args.traits_only else ""
    meta: Result = {"started_at": started_at.isoformat(), "profile": profile.name}
    meta["traits_only"] = args.traits_only
    meta.update(machine=machine, other_cpu_at_start=quiet)
    runner = Runner(profile)
    work = Path(tempfile.mkdtemp(prefix="tsbench-"))
    busy_before, own_before = machine_busy_seconds(), own_cpu_seconds()
    log(f"turnstore benchmark, {profile.name} profile, work directory {work}")
    try:
        servers = step(
            runner,
            "traits",
            lambda: run_traits(
                runner, work, not args.skip_redis, not args.skip_postgres, not args.skip_rust
            ),
        )
        meta["trait_redis_server"] = (servers or {}).get("redis")
        meta["trait_postgres_server"] = (servers or {}).get("postgres")
        if not args.traits_only:
            run_others(runner, work, args.skip_redis, meta)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["wall_s"] = time.perf_counter() - runner.started
    meta["other_cpu"] = other_cpu(busy_before, own_before, meta["wall_s"], runner.foreign_cpu_s)
    derived, targets = evaluate(runner.results, profile, args.traits_only)
    table = render(meta, runner.results, derived, targets, profile)
    print(table)
    report: Result = {
        "meta": meta,
        "profile": asdict(profile),
        "results": runner.results,
        "derived": derived,
        "targets": targets,
        "table": table,
    }
    path = write_results(report, args.results_dir, stamp)
    log(f"results written to {path} and {path.parent / 'latest.json'}")
    failed = [name for name, result in runner.results.items() if "error" in result]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
