"""Raw LMDB in one process, the floor under turnstore's storage engine.

The same 256-byte values, keyed by 8-byte big-endian counters (as a thread's
events are keyed by position), in an environment opened with ``sync=True``:
each write transaction is fsynced when it commits.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import lmdb

from bench.common import Deadline, EnvelopeFactory, Result, rate_result

MAP_SIZE: Final = 16 * 1024**3
LOAD_TXN_PUTS: Final = 10_000
KEY: Final = struct.Struct(">Q")


def _open(path: Path) -> Any:
    path.mkdir(parents=True, exist_ok=True)
    return lmdb.open(str(path), map_size=MAP_SIZE, sync=True, metasync=True, max_dbs=8)


def _puts(env: Any, db: Any, value: bytes, per_txn: int, seconds: float) -> Result:
    """Synced transactions of ``per_txn`` puts each, for ``seconds``."""
    deadline, latencies = Deadline(seconds), []
    key = 0
    while not deadline.passed():
        started = time.perf_counter()
        with env.begin(write=True, db=db) as txn:
            for _ in range(per_txn):
                txn.put(KEY.pack(key), value)
                key += 1
        latencies.append(time.perf_counter() - started)
    result = rate_result(key, deadline.elapsed())
    result["txn"] = rate_result(len(latencies), deadline.elapsed(), latencies)
    result["puts_per_txn"] = per_txn
    return result


def _fill(env: Any, db: Any, value: bytes, count: int) -> None:
    for first in range(0, count, LOAD_TXN_PUTS):
        with env.begin(write=True, db=db) as txn:
            for key in range(first, min(first + LOAD_TXN_PUTS, count)):
                txn.put(KEY.pack(key), value, append=True)


def _scan(env: Any, db: Any, expected: int) -> Result:
    """Read every value with a cursor (each value copied into a bytes object)."""
    count = nbytes = 0
    started = time.perf_counter()
    with env.begin(db=db, buffers=False) as txn, txn.cursor() as cursor:
        for value in cursor.iternext(keys=False, values=True):
            count += 1
            nbytes += len(value)
    elapsed = time.perf_counter() - started
    result = rate_result(count, elapsed)
    result.update(
        mb_per_s=nbytes / elapsed / 1e6 if elapsed > 0 else 0.0,
        expected=expected,
        complete=count == expected,
    )
    return result


def run_all(
    path: str, per_txn: list[int], duration: float, warmup: float, scans: list[int]
) -> Result:
    """Synced puts at each ``per_txn``, then a cursor scan of databases of ``scans`` values."""
    env = _open(Path(path))
    try:
        value = EnvelopeFactory().payload()
        puts: Result = {}
        for n in per_txn:
            _puts(env, env.open_db(f"warmup-{n}".encode()), value, n, warmup)
            puts[str(n)] = _puts(env, env.open_db(f"puts-{n}".encode()), value, n, duration)
        scanned: Result = {}
        for count in scans:
            db = env.open_db(f"scan-{count}".encode())
            _fill(env, db, value, count)
            scanned[str(count)] = _scan(env, db, count)
        return {
            "puts_by_txn_size": puts,
            "scan": scanned,
            "value_bytes": len(value),
            "lmdb_version": ".".join(map(str, lmdb.version())),
        }
    finally:
        env.close()


SCENARIOS: Final[dict[str, Callable[..., Result]]] = {"lmdb": run_all}


def run(scenario: str, params: dict[str, Any]) -> Result:
    """Run one scenario."""
    result: Result = SCENARIOS[scenario](**params)
    return result
