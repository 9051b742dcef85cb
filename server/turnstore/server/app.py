"""Build the gRPC server, and run it until a signal.

:func:`build_server` makes a ready-to-start server bound to its addresses
(tests bind port 0 and read the real port back); :func:`serve` opens the
engine, runs the server until SIGTERM or SIGINT, then shuts down in order:
stop accepting calls, let in-flight calls finish (cancelling them after the
grace period), commit queued writes, close LMDB, release the directory lock.
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog

from turnstore.client import DEFAULT_TARGET as DEFAULT_LISTEN
from turnstore.server.acks import AckPump
from turnstore.server.engine import Engine, EngineConfig
from turnstore.server.followers import Followers
from turnstore.server.service import (
    AdminService,
    EventStoreService,
    HistoryStoreService,
    add_service,
)

log = structlog.get_logger("turnstore")

DEFAULT_DATA_DIR = Path("turnstore-data")


@dataclass(frozen=True)
class ServerConfig:
    """What the daemon serves and where.

    ``listen`` holds ``HOST:PORT`` or ``unix:PATH`` addresses. Addresses that
    are not loopback are refused unless ``allow_remote`` is set.
    """

    engine: EngineConfig
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    allow_remote: bool = False
    grace_seconds: float = 5.0
    read_threads: int = 4


@dataclass
class BuiltServer:
    """A bound, not yet started server and the addresses it is bound to."""

    server: grpc.aio.Server
    followers: Followers
    executor: ThreadPoolExecutor
    addresses: list[str] = field(default_factory=list)

    async def stop(self, grace_seconds: float) -> None:
        """End followers, stop the server (in-flight calls get the grace period)."""
        self.followers.close()
        await self.server.stop(grace_seconds)
        self.executor.shutdown(wait=True)


def check_listen_address(address: str, allow_remote: bool) -> None:
    """Raise ValueError for a malformed address or a non-loopback one."""
    if address.startswith("unix:"):
        if len(address) <= len("unix:"):
            raise ValueError(f"listen address {address!r} names no socket path")
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"listen address {address!r} is not HOST:PORT or unix:PATH")
    host = host.strip("[]")
    if allow_remote or host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"listen address {address!r} is not loopback; turnstore has no access "
            "control yet, so pass --allow-remote to serve beyond this host on purpose"
        )


def build_server(config: ServerConfig, engine: Engine) -> BuiltServer:
    """A server with both services over ``engine``, bound to every address.

    Raises ValueError for an unacceptable address and RuntimeError when an
    address cannot be bound. Must be called with an event loop running.
    """
    for address in config.listen:
        check_listen_address(address, config.allow_remote)
    executor = ThreadPoolExecutor(config.read_threads, thread_name_prefix="turnstore-read")
    max_message = config.engine.limits.max_message_bytes
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
            ("grpc.so_reuseport", 0),
        ]
    )
    followers = Followers(asyncio.get_running_loop())
    engine.add_commit_listener(followers.notify)
    parts = (engine, executor, followers, AckPump(asyncio.get_running_loop()))
    add_service(server, "EventStoreService", EventStoreService(*parts))
    add_service(server, "HistoryStoreService", HistoryStoreService(*parts))
    add_service(server, "AdminService", AdminService(*parts))
    built = BuiltServer(server, followers, executor)
    for address in config.listen:
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as error:
            raise RuntimeError(f"cannot listen on {address!r}: {error}") from error
        if address.startswith("unix:"):
            built.addresses.append(address)
        else:
            host = address.rpartition(":")[0]
            built.addresses.append(f"{host}:{port}")
    return built


async def serve(config: ServerConfig) -> None:
    """Run the daemon until SIGTERM or SIGINT, then shut down in order."""
    engine = Engine.open(config.engine)
    try:
        built = build_server(config, engine)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await built.server.start()
        log.info(
            "serving",
            data_dir=str(config.engine.data_dir),
            listen=built.addresses,
            max_map_bytes=config.engine.max_map_bytes,
        )
        await stop.wait()
        log.info("stopping", grace_seconds=config.grace_seconds)
        await built.stop(config.grace_seconds)
    finally:
        engine.close()
    log.info("stopped")
