"""Load generators against Redis Streams, run inside ``bench.client``.

The same work as the turnstore scenarios, with redis-py (hiredis parser)
either synchronous (``mode="sync"``) or asyncio (``mode="async"``): XADD one
at a time, XADD pipelined, and XRANGE paging through a stream. Each entry
has one field ``e`` holding a 256-byte encoded envelope.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

import redis
import redis.asyncio
import redis.utils

from bench.common import Deadline, EnvelopeFactory, Result, rate_result

HOST: Final = "127.0.0.1"
FIELD: Final = b"e"
LOAD_BATCH: Final = 1000


def _stream_name(kind: str) -> str:
    return f"bench-{kind}-{uuid.uuid4().hex[:10]}"


def _client_info(mode: str) -> Result:
    return {
        "mode": mode,
        "hiredis": bool(redis.utils.HIREDIS_AVAILABLE),
        "redis_py": redis.__version__,
    }


def _writes_sync(port: int, duration: float, warmup: float, pipeline: int) -> Result:
    client = redis.Redis(host=HOST, port=port)
    try:
        payload = {FIELD: EnvelopeFactory().payload()}
        stream = _stream_name("xadd")

        def single(seconds: float) -> Result:
            deadline, latencies = Deadline(seconds), []
            while not deadline.passed():
                started = time.perf_counter()
                client.xadd(stream, payload)  # type: ignore[arg-type]
                latencies.append(time.perf_counter() - started)
            return rate_result(len(latencies), deadline.elapsed(), latencies)

        def pipelined(seconds: float) -> Result:
            deadline, latencies = Deadline(seconds), []
            while not deadline.passed():
                started = time.perf_counter()
                batch = client.pipeline(transaction=False)
                for _ in range(pipeline):
                    batch.xadd(stream, payload)  # type: ignore[arg-type]
                batch.execute()
                latencies.append(time.perf_counter() - started)
            result = rate_result(len(latencies) * pipeline, deadline.elapsed())
            result["batch"] = rate_result(len(latencies), deadline.elapsed(), latencies)
            return result

        single(warmup)
        one = single(duration)
        pipelined(warmup)
        return {"single": one, "pipelined": pipelined(duration), "pipeline": pipeline}
    finally:
        client.close()


async def _writes_async(port: int, duration: float, warmup: float, pipeline: int) -> Result:
    client = redis.asyncio.Redis(host=HOST, port=port)
    try:
        payload = {FIELD: EnvelopeFactory().payload()}
        stream = _stream_name("xadd")

        async def single(seconds: float) -> Result:
            deadline, latencies = Deadline(seconds), []
            while not deadline.passed():
                started = time.perf_counter()
                await client.xadd(stream, payload)  # type: ignore[arg-type]
                latencies.append(time.perf_counter() - started)
            return rate_result(len(latencies), deadline.elapsed(), latencies)

        async def pipelined(seconds: float) -> Result:
            deadline, latencies = Deadline(seconds), []
            while not deadline.passed():
                started = time.perf_counter()
                batch = client.pipeline(transaction=False)
                for _ in range(pipeline):
                    batch.xadd(stream, payload)  # type: ignore[arg-type]
                await batch.execute()
                latencies.append(time.perf_counter() - started)
            result = rate_result(len(latencies) * pipeline, deadline.elapsed())
            result["batch"] = rate_result(len(latencies), deadline.elapsed(), latencies)
            return result

        await single(warmup)
        one = await single(duration)
        await pipelined(warmup)
        return {"single": one, "pipelined": await pipelined(duration), "pipeline": pipeline}
    finally:
        await client.aclose()


def writes(port: int, mode: str, duration: float, warmup: float, pipeline: int) -> Result:
    """XADD one at a time (rate, latency), then ``pipeline`` per round trip (entries/s)."""
    if mode == "sync":
        result = _writes_sync(port, duration, warmup, pipeline)
    else:
        result = asyncio.run(_writes_async(port, duration, warmup, pipeline))
    result.update(_client_info(mode))
    return result


def load_stream(port: int, stream: str, entries: int) -> Result:
    """Fill ``stream`` with ``entries`` entries, pipelined (setup, not a measurement)."""
    client = redis.Redis(host=HOST, port=port)
    try:
        payload = {FIELD: EnvelopeFactory().payload()}
        deadline = Deadline(float("inf"))
        written = 0
        while written < entries:
            count = min(LOAD_BATCH, entries - written)
            batch = client.pipeline(transaction=False)
            for _ in range(count):
                batch.xadd(stream, payload)  # type: ignore[arg-type]
            batch.execute()
            written += count
        result = rate_result(written, deadline.elapsed())
        result["stored"] = client.xlen(stream)
        return result
    finally:
        client.close()


def _page_start(entry_id: bytes) -> bytes:
    return b"(" + entry_id


def _xrange_sync(port: int, stream: str, page: int) -> tuple[int, int, float]:
    client = redis.Redis(host=HOST, port=port)
    try:
        count = nbytes = 0
        start: bytes | str = "-"
        started = time.perf_counter()
        while True:
            entries: Any = client.xrange(stream, min=start, max="+", count=page)
            for _, fields in entries:
                nbytes += len(fields[FIELD])
            count += len(entries)
            if len(entries) < page:
                break
            start = _page_start(entries[-1][0])
        return count, nbytes, time.perf_counter() - started
    finally:
        client.close()


async def _xrange_async(port: int, stream: str, page: int) -> tuple[int, int, float]:
    client = redis.asyncio.Redis(host=HOST, port=port)
    try:
        count = nbytes = 0
        start: bytes | str = "-"
        started = time.perf_counter()
        while True:
            entries: Any = await client.xrange(stream, min=start, max="+", count=page)
            for _, fields in entries:
                nbytes += len(fields[FIELD])
            count += len(entries)
            if len(entries) < page:
                break
            start = _page_start(entries[-1][0])
        return count, nbytes, time.perf_counter() - started
    finally:
        await client.aclose()


def xrange(port: int, mode: str, stream: str, page: int, expected: int) -> Result:
    """Read all of ``stream`` with XRANGE, ``page`` entries per call.

    ``mb_per_s`` counts the entries' value bytes (the encoded envelopes).
    """
    if mode == "sync":
        count, nbytes, elapsed = _xrange_sync(port, stream, page)
    else:
        count, nbytes, elapsed = asyncio.run(_xrange_async(port, stream, page))
    result = rate_result(count, elapsed)
    result.update(
        mb_per_s=nbytes / elapsed / 1e6 if elapsed > 0 else 0.0,
        page=page,
        expected=expected,
        complete=count == expected,
        **_client_info(mode),
    )
    return result


SCENARIOS: Final[dict[str, Callable[..., Result]]] = {
    "redis-writes": writes,
    "redis-load": load_stream,
    "redis-xrange": xrange,
}


def run(scenario: str, params: dict[str, Any]) -> Result:
    """Run one scenario."""
    result: Result = SCENARIOS[scenario](**params)
    return result
