"""SSE scenarios: follow latency over Server-Sent Events, and 1,000 open followers.

Standalone: ``.venv/bin/python -m bench.sse_load [--quick]`` starts a daemon
with ``--http-listen``, runs each scenario in its own client process
(``python -m bench.sse_load --client SCENARIO --params JSON``) while sampling
the daemon's memory, prints a table and the JSON. ``bench.run`` can take the
scenarios as they are: :data:`SCENARIOS` and :func:`run` follow the
``bench.client`` convention (``params`` holds ``http`` and ``target``).

- ``sse-live-tail``: one ``EventSource``-like reader; a writer appends single
  events over gRPC; ``ack_to_follower`` is the time from the append's
  acknowledgement to the reader parsing that event from the stream.
- ``sse-followers``: ``followers`` streams of one thread opened at once; once
  all are caught up, ``events`` appends arrive at every one of them. The
  orchestrator's memory sample of the daemon covers opening, idling and the
  fan-out; ``fan_out_s`` is the time from the first append until the last
  follower received the last event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final

import aiohttp

from bench.common import EnvelopeFactory, Result, latency_summary
from bench.memory import PeakSampler
from tests.support.daemon import Daemon
from turnstore import TurnstoreClient

SCENARIOS: Final = ("sse-live-tail", "sse-followers")


def _url(http: str, thread: str, **params: object) -> str:
    query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
    return f"{http}/v1/threads/{urllib.parse.quote(thread, safe='')}/events?{query}"


async def _read_events(
    response: aiohttp.ClientResponse, on_event: Callable[[str, str], bool]
) -> None:
    """Parse the stream; ``on_event(name, data)`` returns True to stop."""
    name, data = "message", ""
    while True:
        raw = await response.content.readline()
        if not raw:
            return
        line = raw.decode().rstrip("\n")
        if not line:
            if data and on_event(name, data):
                return
            name, data = "message", ""
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]


async def sse_live_tail(http: str, target: str, events: int) -> Result:
    thread = f"bench-sse-tail-{time.time_ns()}"
    factory = EnvelopeFactory()
    received: dict[int, float] = {}
    caught_up = asyncio.Event()
    async with aiohttp.ClientSession() as session, TurnstoreClient(target) as client:
        response = await session.get(_url(http, thread), timeout=aiohttp.ClientTimeout(None))

        def seen(name: str, data: str) -> bool:
            if name == "caught_up":
                caught_up.set()
            elif name == "message":
                received[json.loads(data)["position"]] = time.perf_counter()
            return len(received) >= events

        reader = asyncio.create_task(_read_events(response, seen))
        await asyncio.wait_for(caught_up.wait(), 30)
        acked: dict[int, float] = {}
        started = time.perf_counter()
        for _ in range(events):
            position = await client.events.append(thread, 1, factory.make())
            acked[position] = time.perf_counter()
        await asyncio.wait_for(reader, 60)
        elapsed = time.perf_counter() - started
        response.close()
    return {
        "events": events,
        "elapsed_s": elapsed,
        "ack_to_follower": latency_summary([received[p] - t for p, t in acked.items()]),
    }


async def sse_followers(http: str, target: str, followers: int, events: int) -> Result:
    thread = f"bench-sse-fan-{time.time_ns()}"
    factory = EnvelopeFactory()
    connector = aiohttp.TCPConnector(limit=0)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        TurnstoreClient(target) as client,
    ):
        ready = 0
        all_ready = asyncio.Event()
        last_seen: list[float] = []

        async def follow() -> None:
            nonlocal ready
            response = await session.get(_url(http, thread), timeout=aiohttp.ClientTimeout(None))
            count = 0

            def seen(name: str, data: str) -> bool:
                nonlocal ready, count
                if name == "caught_up":
                    ready += 1
                    if ready == followers:
                        all_ready.set()
                elif name == "message":
                    count += 1
                    if count == events:
                        last_seen.append(time.perf_counter())
                        return True
                return False

            try:
                await _read_events(response, seen)
            finally:
                response.close()

        opened = time.perf_counter()
        tasks = [asyncio.create_task(follow()) for _ in range(followers)]
        await asyncio.wait_for(all_ready.wait(), 120)
        open_s = time.perf_counter() - opened
        print("followers open", file=sys.stderr, flush=True)
        started = time.perf_counter()
        for _ in range(events):
            await client.events.append(thread, 1, factory.make())
        await asyncio.wait_for(asyncio.gather(*tasks), 300)
        fan_out = max(last_seen) - started
    return {
        "followers": followers,
        "events": events,
        "open_s": open_s,
        "fan_out_s": fan_out,
        "deliveries_per_s": followers * events / fan_out,
    }


RUNNERS: Final[dict[str, Callable[..., Coroutine[Any, Any, Result]]]] = {
    "sse-live-tail": sse_live_tail,
    "sse-followers": sse_followers,
}


def run(scenario: str, params: dict[str, Any]) -> Result:
    """Run one scenario in this process (the ``bench.client`` convention)."""
    return asyncio.run(RUNNERS[scenario](**params))


def _client(scenario: str, params: dict[str, Any], daemon_pid: int) -> Result:
    command = [sys.executable, "-m", "bench.sse_load", "--client", scenario]
    command += ["--params", json.dumps(params)]
    with PeakSampler(daemon_pid) as sampler:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{scenario} failed: {done.stderr[-4000:]}")
    result: Result = json.loads(done.stdout.strip().splitlines()[-1])
    result["daemon_memory"] = sampler.result
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sse_load", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10x fewer events, 100 followers")
    parser.add_argument("--client", choices=SCENARIOS, help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        sys.stdout.write(json.dumps(run(args.client, json.loads(args.params))) + "\n")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-sse-") as work:
        daemon = Daemon(
            Path(work) / "data",
            listen=[f"unix:{work}/s.sock"],
            extra_args=["--http-listen", "127.0.0.1:0"],
        )
        first = daemon.start()
        assert daemon.process is not None
        base = {"http": first["http"], "target": daemon.target}
        try:
            tail = _client(
                "sse-live-tail", {**base, "events": 200 if args.quick else 2000}, daemon.process.pid
            )
            fan = _client(
                "sse-followers",
                {**base, "followers": 100 if args.quick else 1000, "events": 20},
                daemon.process.pid,
            )
        finally:
            daemon.stop()
    latency = tail["ack_to_follower"]
    memory = fan["daemon_memory"]["peak_increase_kib"]
    print(f"SSE follow latency (append acked -> parsed by the reader), {tail['events']} events:")
    print(f"  p50 {latency['p50_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms")
    print(f"{fan['followers']} SSE followers of one live thread, {fan['events']} appends:")
    print(
        f"  opened and caught up in {fan['open_s']:.2f} s; fan-out {fan['fan_out_s']:.2f} s "
        f"({fan['deliveries_per_s']:,.0f} deliveries/s)"
    )
    print(
        f"  daemon memory: +{memory.get('RssAnon', 0) / 1024:.1f} MiB anonymous at the peak "
        f"(+{memory.get('VmRSS', 0) / 1024:.1f} MiB RSS)"
    )
    print(json.dumps({"sse_live_tail": tail, "sse_followers": fan}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
