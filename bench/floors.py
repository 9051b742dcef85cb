"""The floors under turnstore's append path, measured in every bench run.

What one append cannot go below on this machine, with the pieces the daemon
is built from and nothing of turnstore itself; every message is
:data:`MESSAGE_BYTES` long, every file lives in the run's work directory
(the file system the daemon's data directory is on).

``floor-bidi`` (one scenario per ``mode``): a grpc.aio bidirectional stream,
Python to Python, over a Unix socket. This process is the client; the server
is another process (``python -m bench.floors serve MODE SOCKET DIR``) whose
handler echoes each message back:

- ``bare``: at once, nothing else;
- ``inline``: after one synced LMDB commit of it (``sync=True,
  metasync=True``, as the daemon opens its environment) run in the handler,
  on the event loop;
- ``thread``: after the same commit on one writer thread, which takes every
  message waiting in its queue into one transaction (a group commit) and
  hands the results back to the loop with one ``call_soon_threadsafe`` per
  commit. With N streams in flight this is the floor of N agents.

Each of the N streams (``concurrencies``) sends a message and awaits its
echo, again and again, for the step's duration after its warm-up.

``floor-disk``: the syncs alone, in this process, each in a loop of one
operation at a time: an LMDB synced commit (data sync, then meta sync); an
LMDB commit with ``metasync=False`` (data synced, meta not); ``pwrite`` +
``fdatasync`` into a preallocated file (zeros written and synced first, so no
write changes the file's size or extents); ``write`` + ``fdatasync``
appending to a file (every sync also syncs the new size).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

import grpc
import lmdb

from bench.common import Deadline, Result, rate_result

SCENARIOS: Final = ("floor-bidi", "floor-disk")
MODES: Final = ("bare", "inline", "thread")
MESSAGE_BYTES: Final = 300
SERVICE: Final = "bench.Floor"
METHOD: Final = f"/{SERVICE}/Echo"
MAP_SIZE: Final = 1024**3
KEY: Final = struct.Struct(">Q")
# The preallocated file: a ring of message slots, rewritten in turn.
PREALLOCATED_BYTES: Final = 8 * 1024 * 1024
SERVER_START_TIMEOUT: Final = 30.0

MESSAGE: Final = bytes(range(256)) + bytes(MESSAGE_BYTES - 256)


def open_lmdb(path: Path, *, metasync: bool = True) -> Any:
    """An environment opened as the daemon opens its own (synced commits)."""
    path.mkdir(parents=True, exist_ok=True)
    return lmdb.open(
        str(path), map_size=MAP_SIZE, sync=True, metasync=metasync, readahead=False, subdir=True
    )


# ---------------------------------------------------------------- the server


class _Writer:
    """One thread committing queued messages, one synced transaction per wake-up.

    Every message waiting when the thread takes the queue goes into the same
    transaction; the futures of that commit are resolved by one callback on
    the loop (``call_soon_threadsafe``).
    """

    def __init__(self, env: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._env = env
        self._loop = loop
        self._queue: queue.SimpleQueue[tuple[bytes, asyncio.Future[None]] | None] = (
            queue.SimpleQueue()
        )
        self._key = 0
        self._thread = threading.Thread(target=self._run, name="floor-writer", daemon=True)
        self._thread.start()

    def commit(self, message: bytes) -> asyncio.Future[None]:
        """A future resolved once ``message`` is committed and synced."""
        future: asyncio.Future[None] = self._loop.create_future()
        self._queue.put((message, future))
        return future

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = [first]
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this commit
                    break
                batch.append(item)
            with self._env.begin(write=True) as txn:
                for message, _ in batch:
                    txn.put(KEY.pack(self._key), message)
                    self._key += 1
            futures = [future for _, future in batch]
            self._loop.call_soon_threadsafe(_resolve, futures)

    def stop(self) -> None:
        """Commit what is queued, then end the thread."""
        self._queue.put(None)
        self._thread.join()


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


async def serve(mode: str, socket: Path, directory: Path) -> None:
    """Serve the echo on ``socket`` until SIGTERM; print ``ready`` once listening."""
    loop = asyncio.get_running_loop()
    env = open_lmdb(directory / f"lmdb-{mode}") if mode != "bare" else None
    writer = _Writer(env, loop) if mode == "thread" else None
    key = 0

    async def echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        nonlocal key
        async for message in requests:
            if writer is not None:
                await writer.commit(message)
            elif env is not None:
                # Blocking the loop on purpose: this floor is the commit done inline.
                with env.begin(write=True) as txn:
                    txn.put(KEY.pack(key), message)
                key += 1
            yield message

    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(echo)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Echo": handler}),)
    )
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    print("ready", flush=True)
    await stopped.wait()
    await server.stop(None)
    if writer is not None:
        writer.stop()
    if env is not None:
        env.close()


# ---------------------------------------------------------------- the client


async def _streams(target: str, concurrency: int, seconds: float) -> Result:
    """``concurrency`` streams, each a message in flight at a time, for ``seconds``."""
    async with grpc.aio.insecure_channel(target) as channel:
        method = channel.stream_stream(METHOD)
        calls = [method() for _ in range(concurrency)]
        latencies: list[float] = []
        deadline = Deadline(seconds)

        async def stream(call: Any) -> None:
            while not deadline.passed():
                started = time.perf_counter()
                await call.write(MESSAGE)
                reply = await call.read()
                latencies.append(time.perf_counter() - started)
                if reply != MESSAGE:
                    raise RuntimeError(f"the echo returned {reply!r}")
            await call.done_writing()

        await asyncio.gather(*(stream(call) for call in calls))
        return rate_result(len(latencies), deadline.elapsed(), latencies)


def _start_server(mode: str, directory: Path) -> tuple[subprocess.Popen[str], str]:
    directory.mkdir(parents=True, exist_ok=True)
    socket = directory / f"floor-{mode}.sock"
    socket.unlink(missing_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.floors", "serve", mode, str(socket), str(directory)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    line = server.stdout.readline()  # "" if it died first
    if line.strip() != "ready":
        server.kill()
        server.wait()
        raise RuntimeError(f"the {mode} floor server did not start (exit {server.returncode})")
    return server, f"unix:{socket}"


def bidi(
    mode: str, directory: str, concurrencies: list[int], duration: float, warmup: float
) -> Result:
    """The round-trip floor of ``mode`` at each concurrency (a warm-up before each)."""
    if mode not in MODES:
        raise ValueError(f"mode: one of {MODES}, not {mode!r}")
    server, target = _start_server(mode, Path(directory))
    try:
        results: Result = {}
        for concurrency in concurrencies:
            warm = asyncio.run(_streams(target, concurrency, warmup))
            measured = asyncio.run(_streams(target, concurrency, duration))
            results[str(concurrency)] = {**measured, "warmup_count": warm["count"]}
    finally:
        server.terminate()
        try:
            server.wait(timeout=SERVER_START_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return {"mode": mode, "message_bytes": MESSAGE_BYTES, "by_concurrency": results}


# ---------------------------------------------------------------- the syncs alone


def _timed(operation: Callable[[], object], duration: float, warmup: float) -> Result:
    """``operation`` one at a time for ``warmup`` s unmeasured, then ``duration`` s."""
    for seconds, keep in ((warmup, False), (duration, True)):
        deadline, latencies = Deadline(seconds), []
        while not deadline.passed():
            started = time.perf_counter()
            operation()
            latencies.append(time.perf_counter() - started)
        if keep:
            return rate_result(len(latencies), deadline.elapsed(), latencies)
    raise AssertionError("unreachable")


def _lmdb_commit(env: Any) -> Callable[[], None]:
    keys = iter(range(1 << 62))

    def commit() -> None:
        with env.begin(write=True) as txn:
            txn.put(KEY.pack(next(keys)), MESSAGE)

    return commit


def disk(directory: str, duration: float, warmup: float) -> Result:
    """Each sync floor alone (see the module's docstring)."""
    where = Path(directory)
    where.mkdir(parents=True, exist_ok=True)
    result: Result = {"message_bytes": MESSAGE_BYTES}
    for name, metasync in (("lmdb_sync", True), ("lmdb_nometasync", False)):
        env = open_lmdb(where / name, metasync=metasync)
        try:
            result[name] = _timed(_lmdb_commit(env), duration, warmup)
        finally:
            env.close()

    ring = os.open(where / "preallocated", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(ring, bytes(PREALLOCATED_BYTES))
        os.fsync(ring)
        slots = iter(range(1 << 62))

        def overwrite() -> None:
            offset = next(slots) * MESSAGE_BYTES % (PREALLOCATED_BYTES - MESSAGE_BYTES)
            os.pwrite(ring, MESSAGE, offset)
            os.fdatasync(ring)

        result["pwrite_fdatasync"] = _timed(overwrite, duration, warmup)
    finally:
        os.close(ring)

    log = os.open(where / "appended", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    try:

        def append() -> None:
            os.write(log, MESSAGE)
            os.fdatasync(log)

        result["append_fdatasync"] = _timed(append, duration, warmup)
    finally:
        os.close(log)
    return result


def run(scenario: str, params: dict[str, Any]) -> Result:
    """Entry point for ``bench.client``."""
    if scenario == "floor-bidi":
        return bidi(**params)
    if scenario == "floor-disk":
        return disk(**params)
    raise ValueError(scenario)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.floors serve MODE SOCKET DIR``: a floor's server."""
    parser = argparse.ArgumentParser(prog="python -m bench.floors")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("socket", type=Path)
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.mode, args.socket, args.directory))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
