"""Count the hand-offs of one awaited append, in the client and in the daemon.

``python -m bench.handoffs [--appends N] [--strace]``: starts ``turnstore
serve`` (LMDB, a Unix socket in a temporary directory) and one client
process that awaits ``events.append`` N times on one thread (after 300
warm-up appends), and prints, per append and for each process, the event
loop's iterations, its ``call_soon`` calls (task wake-ups and callbacks)
and its ``call_soon_threadsafe`` calls (another thread waking the loop).
With ``--strace``, ``strace -f -c`` is attached to every thread of both
processes for the measured window and the thread-wake syscalls are printed
too (futex, epoll_wait, write, read, sendto, recvfrom, sendmsg, recvmsg;
the window includes about a second of idle time).

These are counts, not times: load on a shared machine does not change them
(except futex, which counts GIL hand-overs too). docs/append-path.md
explains the chain they measure. Not part of ``bench.run``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

WARMUP_APPENDS: Final = 300
SYSCALLS: Final = (
    "futex",
    "epoll_wait",
    "write",
    "read",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
)
LOOP_COUNTS: Final = ("loop_iterations", "call_soon", "call_soon_threadsafe")
START_TIMEOUT: Final = 30.0


def install_loop_counters(out: Path) -> None:
    """Count every event loop's iterations and ``call_soon(_threadsafe)`` calls in this process.

    SIGUSR1 appends the counts so far to ``out`` (one JSON line) and resets
    them. Patches ``asyncio.BaseEventLoop`` at class level, so it must run
    before the loop does anything.
    """
    import asyncio.base_events as base

    counts: collections.Counter[str] = collections.Counter()
    call_soon = base.BaseEventLoop.call_soon
    call_soon_threadsafe = base.BaseEventLoop.call_soon_threadsafe
    run_once = base.BaseEventLoop._run_once  # type: ignore[attr-defined]

    def counted_call_soon(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["call_soon"] += 1
        return call_soon(self, *args, **kwargs)

    def counted_call_soon_threadsafe(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["call_soon_threadsafe"] += 1
        return call_soon_threadsafe(self, *args, **kwargs)

    def counted_run_once(self: Any) -> Any:
        counts["loop_iterations"] += 1
        return run_once(self)

    def dump(*_: Any) -> None:
        with out.open("a") as file:
            file.write(json.dumps(dict(counts)) + "\n")
        counts.clear()

    setattr(base.BaseEventLoop, "call_soon", counted_call_soon)  # noqa: B010 (typed as a method)
    setattr(base.BaseEventLoop, "call_soon_threadsafe", counted_call_soon_threadsafe)  # noqa: B010
    setattr(base.BaseEventLoop, "_run_once", counted_run_once)  # noqa: B010
    signal.signal(signal.SIGUSR1, dump)


def serve_counted(out: Path, argv: list[str]) -> int:
    """``turnstore serve`` with loop counters (the daemon process)."""
    install_loop_counters(out)
    from turnstore.cli.main import main

    sys.argv = ["turnstore", *argv]
    return int(main() or 0)


async def append_counted(socket_path: str, appends: int) -> None:
    """The client: warm up, say ready, wait for a line on stdin, then the measured appends."""
    from bench.traits_common import TextDeltas
    from turnstore import TurnstoreClient

    deltas = TextDeltas()
    async with TurnstoreClient(f"unix:{socket_path}") as client:
        for _ in range(WARMUP_APPENDS):
            await client.events.append("handoffs-warmup", 1, deltas.make())
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        os.kill(os.getpid(), signal.SIGUSR1)  # counts from here
        for _ in range(appends):
            await client.events.append("handoffs", 1, deltas.make())
        os.kill(os.getpid(), signal.SIGUSR1)


def _threads(pid: int) -> str:
    return ",".join(sorted(os.listdir(f"/proc/{pid}/task")))


def _strace_counts(path: Path) -> dict[str, int]:
    counts = {}
    for line in path.read_text().splitlines():
        match = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if match:
            counts[match.group(2)] = int(match.group(1))
    return counts


def _wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not happen within {START_TIMEOUT} s")
        time.sleep(0.05)


def measure(appends: int, use_strace: bool) -> dict[str, dict[str, float]]:
    """Per-append counts of both processes: {"daemon": {...}, "client": {...}}."""
    if use_strace and shutil.which("strace") is None:
        raise RuntimeError("--strace needs strace on PATH")
    with tempfile.TemporaryDirectory(prefix="turnstore-handoffs-") as scratch:
        work = Path(scratch)
        socket_path = work / "s.sock"
        me = [sys.executable, "-m", "bench.handoffs"]
        daemon = subprocess.Popen(
            [
                *me,
                "serve",
                str(work / "daemon.jsonl"),
                "serve",
                "--data-dir",
                str(work / "data"),
                "--listen",
                f"unix:{socket_path}",
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        tracers: list[subprocess.Popen[bytes]] = []
        try:
            _wait_for(socket_path.exists, "the daemon's socket")
            client = subprocess.Popen(
                [*me, "client", str(work / "client.jsonl"), str(socket_path), str(appends)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert client.stdin is not None and client.stdout is not None
            if client.stdout.readline().strip() != b"ready":
                raise RuntimeError("the client did not warm up")
            if use_strace:
                for name, pid in (("daemon", daemon.pid), ("client", client.pid)):
                    tracers.append(
                        subprocess.Popen(
                            [
                                "strace",
                                "-f",
                                "-c",
                                "-o",
                                str(work / f"{name}.strace"),
                                "-p",
                                _threads(pid),
                            ],
                            stderr=subprocess.DEVNULL,
                        )
                    )
                time.sleep(1.0)  # strace attaches asynchronously; nothing to poll
            daemon.send_signal(signal.SIGUSR1)
            client.stdin.write(b"go\n")
            client.stdin.flush()
            client.wait(timeout=600)
            daemon.send_signal(signal.SIGUSR1)
            _wait_for(
                lambda: len((work / "daemon.jsonl").read_text().splitlines()) >= 2,
                "the daemon's counts",
            )
            for tracer in tracers:
                tracer.send_signal(signal.SIGINT)
                tracer.wait(timeout=30)
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
        result: dict[str, dict[str, float]] = {}
        for name in ("daemon", "client"):
            lines = (work / f"{name}.jsonl").read_text().splitlines()
            loop = json.loads(lines[1])
            row = {key: loop.get(key, 0) / appends for key in LOOP_COUNTS}
            if use_strace:
                syscalls = _strace_counts(work / f"{name}.strace")
                row |= {key: syscalls.get(key, 0) / appends for key in SYSCALLS}
            result[name] = row
        return result


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "serve":
        sys.exit(serve_counted(Path(sys.argv[2]), sys.argv[3:]))
    if len(sys.argv) > 2 and sys.argv[1] == "client":
        out, socket_path, appends = sys.argv[2:5]
        install_loop_counters(Path(out))
        asyncio.run(append_counted(socket_path, int(appends)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--strace", action="store_true")
    args = parser.parse_args()
    result = measure(args.appends, args.strace)
    print(f"per awaited append, one agent, {args.appends} appends")
    for name, row in result.items():
        print(f"{name:>7}: " + "  ".join(f"{key} {value:.2f}" for key, value in row.items()))


if __name__ == "__main__":
    main()
