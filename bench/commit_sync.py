"""``--commit-sync journal`` against ``lmdb``, quickly (docs/one-sync.md): indicative only.

    python -m bench.commit_sync [--seconds 5] [--dir DIR]

Prints, for each mode, the p50/p99 of:

- ``engine``: one ``LmdbEngine.append`` of one 300-byte event at a time, awaited
  (the writer thread's commit path alone, recording and journal included);
- ``append``: one agent's ``await client.events.append`` through a real
  ``turnstore serve`` on a Unix socket;

beside the disk floors of :func:`bench.floors.disk` (LMDB synced commit, with
``metasync=False``, ``pwrite`` + ``fdatasync`` of a preallocated file).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench.floors import disk
from bench.services import start_daemon
from bench.traits_common import TextDeltas
from turnstore import TurnstoreClient
from turnstore.server.storage.config import EngineConfig
from turnstore.server.storage.lmdb.engine import LmdbEngine
from turnstore.server.storage.values import NewEvent


def _pcts(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1e6
    p99 = ordered[int(len(ordered) * 0.99)] * 1e6
    return f"p50 {p50:7.0f} us  p99 {p99:7.0f} us  n={len(ordered)}"


def engine_appends(directory: Path, mode: str, seconds: float) -> list[float]:
    engine = LmdbEngine.open(EngineConfig(data_dir=directory, commit_sync=mode))
    try:
        latencies: list[float] = []
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            engine.append("bench", 1, [NewEvent(f"id-{n}", b"x" * 300)]).result()
            latencies.append(time.perf_counter() - started)
            n += 1
        return latencies[len(latencies) // 10 :]
    finally:
        engine.close()


async def _agent(target: str, seconds: float) -> list[float]:
    factory = TextDeltas()
    latencies: list[float] = []
    async with TurnstoreClient(target) as client:
        for _ in range(200):  # warm-up
            await client.events.append("agent", 1, factory.make())
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            await client.events.append("agent", 1, factory.make())
            latencies.append(time.perf_counter() - started)
    return latencies


def daemon_appends(directory: Path, mode: str, seconds: float) -> list[float]:
    daemon = start_daemon(directory, "--commit-sync", mode)
    try:
        return asyncio.run(_agent(daemon.target, seconds))
    finally:
        daemon.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="commit-sync-") as tmp:
        root = Path(tmp)
        floors = disk(str(root / "floors"), args.seconds, 1.0)
        for name in ("lmdb_sync", "lmdb_nometasync", "pwrite_fdatasync"):
            result = floors[name]
            assert isinstance(result, dict)
            print(f"floor {name:18} p50 {float(result['p50_ms']) * 1000:7.0f} us")
        for mode in ("lmdb", "journal"):
            latencies = engine_appends(root / f"engine-{mode}", mode, args.seconds)
            print(f"engine  {mode:8} {_pcts(latencies)}")
        for mode in ("lmdb", "journal"):
            latencies = daemon_appends(root / f"daemon-{mode}", mode, args.seconds)
            print(f"append  {mode:8} {_pcts(latencies)}")


if __name__ == "__main__":
    main()
