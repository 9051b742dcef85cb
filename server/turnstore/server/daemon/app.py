"""Build the gRPC server, and run it until a signal.

:func:`build_server` makes a ready-to-start server bound to its addresses
(tests bind port 0 and read the real port back); :func:`serve` opens the
engine, runs the server until SIGTERM or SIGINT, then shuts down in order:
stop accepting calls, let in-flight calls finish (cancelling them after the
grace period), commit queued writes and close the engine (LMDB releases its
directory lock, PostgreSQL its connections). Both backends take the same
path: the engine is opened by :func:`~turnstore.server.storage.factory.open_engine`
and known only as a :class:`~turnstore.server.storage.interface.StorageEngine`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from turnstore.server.access.scopes import FULL, Scope
from turnstore.server.access.sessions import REVOCATIONS_FILE
from turnstore.server.api.connections import (
    AcceptFailures,
    FilePlan,
    MemoryTrimmer,
    raise_file_limit,
)
from turnstore.server.api.grpc.admin import AdminService
from turnstore.server.api.grpc.append_stream import MAX_ITEMS_PER_MESSAGE
from turnstore.server.api.grpc.event_store import EventStoreService
from turnstore.server.api.grpc.history_store import HistoryStoreService
from turnstore.server.api.grpc.ingress import Ingress, IngressConfig
from turnstore.server.api.grpc.interceptors import BearerTokenInterceptor, MetricsInterceptor
from turnstore.server.api.grpc.servicer import add_service
from turnstore.server.api.metrics import Metrics
from turnstore.server.daemon.options import DEFAULT_LISTEN
from turnstore.server.daemon.ports import check_listen_free
from turnstore.server.replay.acks import AckPump
from turnstore.server.replay.followers import Followers, SendLimits
from turnstore.server.storage.config import EngineConfig, PostgresConfig
from turnstore.server.storage.factory import open_engine
from turnstore.server.storage.interface import StorageEngine
from turnstore.server.storage.values import SpaceUsage

if TYPE_CHECKING:
    from turnstore.server.api.http.server import HttpApi, HttpConfig

log = structlog.get_logger("turnstore")


@dataclass(frozen=True)
class TlsConfig:
    """Server TLS: PEM files. With ``client_ca``, clients must present a
    certificate signed by it (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials; raises OSError for unreadable files."""
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.client_ca.read_bytes() if self.client_ca else None,
            require_client_auth=self.client_ca is not None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The same settings for the HTTP listener; raises OSError or ssl.SSLError."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        if self.client_ca is not None:
            context.load_verify_locations(self.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


@dataclass(frozen=True)
class ServerConfig:
    """What the daemon serves and where.

    ``listen`` holds ``HOST:PORT`` or ``unix:PATH`` addresses. Addresses that
    are not loopback are refused unless ``allow_remote`` is set. Unix sockets
    are created with ``socket_mode`` permissions (owner-only by default).
    With ``auth_token``, every call but health checks must carry it as a
    bearer token; ``auth_tokens`` are more tokens, each with its scope, and
    either turns the check on. With ``tls``, TCP addresses serve TLS (Unix sockets stay
    plain: the file permissions guard them). ``metrics_listen`` is the
    loopback ``HOST:PORT`` of the Prometheus endpoint, off when None.
    ``ingress`` bounds what one message, one connection and all connections
    may hold (:mod:`turnstore.server.api.grpc.ingress`).
    ``follower_limits`` bound the bytes replays hold in messages their peers
    have not taken yet. ``http`` turns on the HTTP listener (event streams
    for browsers, JSON reads, the inspector), with the same token, TLS and
    loopback rule.
    """

    engine: EngineConfig
    # The PostgreSQL backend's database; None: LMDB in ``engine.data_dir``.
    postgres: PostgresConfig | None = None
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    allow_remote: bool = False
    grace_seconds: float = 5.0
    read_threads: int = 4
    socket_mode: int = 0o600
    auth_token: str | None = None
    # More bearer tokens, each with its scope (--auth-tokens-file).
    auth_tokens: tuple[tuple[str, Scope], ...] = ()
    tls: TlsConfig | None = None
    metrics_listen: str | None = None
    health_and_reflection: bool = True
    ingress: IngressConfig = field(default_factory=IngressConfig)
    follower_limits: SendLimits = field(default_factory=SendLimits)
    http: HttpConfig | None = None

    @property
    def access_tokens(self) -> tuple[tuple[str, Scope], ...]:
        """Every accepted bearer token with its scope (``auth_token`` has the full one)."""
        single = ((self.auth_token, FULL),) if self.auth_token is not None else ()
        return single + self.auth_tokens


def _revocations_path(config: ServerConfig) -> Path | None:
    """Where revoked browser sessions are kept on LMDB: in the data directory.

    On PostgreSQL they are kept in the shared database instead.
    """
    if not config.access_tokens or config.postgres is not None:
        return None
    return Path(config.engine.data_dir) / REVOCATIONS_FILE


@dataclass
class BuiltServer:
    """A bound, not yet started server and the addresses it is bound to."""

    server: grpc.aio.Server
    followers: Followers
    executor: ThreadPoolExecutor
    events: EventStoreService
    health: health.aio.HealthServicer | None = None
    addresses: list[str] = field(default_factory=list)
    http: HttpApi | None = None

    async def start(self) -> None:
        """Start serving; health reports SERVING from now on."""
        await self.server.start()
        if self.http is not None:
            await self.http.start()
        if self.health is not None:
            for name in ("", *SERVICE_NAMES):
                await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_seconds: float) -> None:
        """Report NOT_SERVING, end followers, stop (in-flight calls get the grace period)."""
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        self.followers.close()
        self.events.end_append_streams()
        if self.http is not None:
            await self.http.stop()
        await self.server.stop(grace_seconds)
        self.executor.shutdown(wait=True)


SERVICE_NAMES = tuple(
    f"turnstore.v1.{name}" for name in ("EventStoreService", "HistoryStoreService", "AdminService")
)


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
            f"listen address {address!r} is not loopback; pass --allow-remote to serve "
            "beyond this host on purpose (with --auth-token-file and TLS)"
        )


def _bind_unix(server: grpc.aio.Server, address: str, mode: int) -> None:
    # The socket file is created by the bind: create it under a umask that
    # already denies the access the mode denies, so it is never more open.
    previous = os.umask(0o777 & ~mode)
    try:
        server.add_insecure_port(address)
    finally:
        os.umask(previous)
    os.chmod(address[len("unix:") :], mode)


def build_server(
    config: ServerConfig, engine: StorageEngine, metrics: Metrics | None = None
) -> BuiltServer:
    """A server with all services over ``engine``, bound to every address.

    Raises ValueError for an unacceptable address and RuntimeError when an
    address cannot be bound. Must be called with an event loop running.
    """
    for address in config.listen:
        check_listen_address(address, config.allow_remote)
    executor = ThreadPoolExecutor(config.read_threads, thread_name_prefix="turnstore-read")
    limits = config.engine.limits
    ingress = Ingress(config.ingress, limits, executor, MAX_ITEMS_PER_MESSAGE)
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if metrics is not None:
        interceptors.append(MetricsInterceptor(metrics))
    if config.access_tokens:
        interceptors.append(BearerTokenInterceptor(config.access_tokens))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            *config.ingress.grpc_options(limits),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    followers = Followers(config.follower_limits)
    acks = AckPump(asyncio.get_running_loop())
    # Followers are woken in the same loop wake-up as the writers' acks.
    engine.add_commit_listener(lambda changed: acks.call_soon(followers.wake, changed))
    # A shared database's listen connection may lose notifications: on its
    # tick (and reconnects) every follower re-reads (a no-op on LMDB).
    engine.add_wake_all_listener(lambda: acks.call_soon(lambda _: followers.wake_all(), None))
    parts = (engine, executor, followers, acks)
    events = EventStoreService(*parts)
    add_service(server, "EventStoreService", events, ingress)
    add_service(server, "HistoryStoreService", HistoryStoreService(*parts), ingress)
    add_service(server, "AdminService", AdminService(*parts), ingress)
    built = BuiltServer(server, followers, executor, events)
    if config.health_and_reflection:
        built.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(built.health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    if config.http is not None:
        from turnstore.server.api.http.server import HttpApi

        if config.http.listen.startswith("unix:"):
            raise ValueError("--http-listen takes HOST:PORT")
        check_listen_address(config.http.listen, config.allow_remote)
        built.http = HttpApi(
            engine,
            executor,
            followers,
            config.http,
            auth_tokens=config.access_tokens,
            revocations_path=_revocations_path(config),
            revocations_dsn=config.postgres.dsn if config.postgres is not None else None,
            tls=config.tls.ssl_context() if config.tls is not None else None,
            allow_remote=config.allow_remote,
        )
    credentials = config.tls.credentials() if config.tls is not None else None
    for address in config.listen:
        try:
            if address.startswith("unix:"):
                _bind_unix(server, address, config.socket_mode)
                built.addresses.append(address)
                continue
            if credentials is not None:
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as error:
            raise RuntimeError(f"cannot listen on {address!r}: {error}") from error
        host = address.rpartition(":")[0]
        built.addresses.append(f"{host}:{port}")
    return built


def log_space_level(usage: SpaceUsage, crossed: float | None, fell_below: float | None) -> None:
    """Log a crossing of a usage warning level (a space level listener; any thread)."""
    fields = {
        "used_bytes": usage.used_bytes,
        "max_db_bytes": usage.max_bytes,
        "write_limit_bytes": usage.write_limit_bytes,
        "used_percent": round(usage.used_fraction * 100, 1),
    }
    if crossed is not None:
        log.warning("database_filling", level_percent=round(crossed * 100), **fields)
    else:
        log.info("database_space_recovered", below_percent=round((fell_below or 0) * 100), **fields)


def fit_to_file_limit(config: ServerConfig) -> tuple[ServerConfig, FilePlan]:
    """Raise the open-file limit and fit both listeners' connection caps under it.

    Returns the configuration with the caps filled in, and the plan (for
    the ``serving`` line). Raises ValueError when explicit caps do not fit
    (:meth:`FilePlan.fit`).
    """
    soft, _ = raise_file_limit()
    # The pool, the writer's connection and the notification listener's.
    database = config.postgres.pool_size + 2 if config.postgres is not None else 0
    plan = FilePlan.fit(
        soft,
        grpc_connections=config.ingress.max_connections,
        http_connections=config.http.max_connections if config.http is not None else None,
        http=config.http is not None,
        database_connections=database,
    )
    fitted = replace(
        config,
        ingress=replace(config.ingress, max_connections=plan.grpc_connections),
        http=(
            replace(config.http, max_connections=plan.http_connections)
            if config.http is not None
            else None
        ),
    )
    return fitted, plan


async def serve(config: ServerConfig) -> None:
    """Run the daemon until SIGTERM or SIGINT, then shut down in order (either backend)."""
    config, file_plan = fit_to_file_limit(config)
    loop = asyncio.get_running_loop()
    AcceptFailures().install(loop)
    metrics = Metrics() if config.metrics_listen is not None else None
    metrics_host, metrics_port = "", 0
    if config.metrics_listen is not None:
        check_listen_address(config.metrics_listen, config.allow_remote)
        metrics_host, _, port_text = config.metrics_listen.rpartition(":")
        metrics_host, metrics_port = metrics_host.strip("[]"), int(port_text)
    for address in config.listen:
        check_listen_address(address, config.allow_remote)
    # Before the engine opens, which creates LMDB's data directory.
    http_listen = config.http.listen if config.http is not None else None
    check_listen_free((*config.listen, *filter(None, [config.metrics_listen, http_listen])))
    engine = await loop.run_in_executor(None, open_engine, config.engine, config.postgres)
    engine.add_space_level_listener(log_space_level)
    try:
        built = build_server(config, engine, metrics)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        metrics_address = None
        if metrics is not None:
            metrics.watch(engine, built.followers)
            bound = metrics.serve(metrics_host, metrics_port)
            metrics_address = f"{metrics_host}:{bound}"
        await built.start()
        trimmer = MemoryTrimmer()
        trimmer.start()
        log.info(
            "serving",
            **engine.startup_report(),
            listen=built.addresses,
            auth=bool(config.access_tokens),
            tls=config.tls is not None,
            metrics=metrics_address,
            http=built.http.address if built.http is not None else None,
            **file_plan.fields(),
        )
        await stop.wait()
        trimmer.stop()
        log.info("stopping", grace_seconds=config.grace_seconds)
        await built.stop(config.grace_seconds)
    finally:
        await loop.run_in_executor(None, engine.close)
    log.info("stopped")
