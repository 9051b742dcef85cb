"""The ``turnstore`` command line.

``turnstore serve`` runs the daemon; it needs the ``server`` extra
(``pip install 'turnstore[server]'``). Every other subcommand is a client of
a running daemon and needs only the client: :mod:`turnstore.cli_events`
(health, tail, threads, turns, clear), :mod:`turnstore.cli_history`
(conversations, history) and :mod:`turnstore.admin_cli` (backup, stats,
export, import); :mod:`turnstore.cli_common` holds their connection options.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from turnstore.admin_cli import add_admin_commands
from turnstore.cli_common import read_token as _read_token
from turnstore.cli_events import add_event_commands
from turnstore.cli_history import add_history_commands
from turnstore.client import DEFAULT_TARGET

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Parse ``90``, ``90s``, ``30m``, ``12h``, ``7d`` into seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 90s, 30m, 12h or 7d)")
    return float(match.group(1)) * _SECONDS[match.group(2).lower()]


def parse_size(text: str) -> int:
    """Parse ``123``, ``64MiB``, ``16G`` (binary units) into bytes."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 512MiB or 16GiB)")
    unit = (match.group(2) or "")[:1].lower()
    return int(match.group(1)) * _UNITS[unit]


class _EnvOptions:
    """Adds options that a TURNSTORE_<NAME> environment variable can also set.

    The command line wins over the variable, the variable over the default;
    ``--help`` names the variable and shows the default.
    """

    def __init__(self, group: argparse._ActionsContainer) -> None:
        self._group = group

    def add(self, flag: str, *, help: str, **kwargs: Any) -> None:
        env = "TURNSTORE_" + flag.lstrip("-").upper().replace("-", "_")
        raw = os.environ.get(env)
        action = kwargs.get("action")
        if action == "store_true":
            kwargs["default"] = (raw or "").lower() in ("1", "true", "yes", "on")
        elif action == "append":
            if raw:
                kwargs["default"] = [item.strip() for item in raw.split(",") if item.strip()]
        elif raw is not None:
            kwargs["default"] = raw
        shown = kwargs.get("default")
        suffix = f" [env {env}" + (f"; default {shown}]" if shown not in (None, False) else "]")
        self._group.add_argument(flag, help=help + suffix, **kwargs)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turnstore", description="A durable store for AI agent event streams."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_event_commands(commands)
    add_history_commands(commands)
    add_admin_commands(commands)
    serve = commands.add_parser(
        "serve",
        help="run the daemon",
        description="Run the turnstore daemon until SIGTERM or SIGINT.",
    )
    option = _EnvOptions(serve)
    option.add(
        "--data-dir", type=Path, default="turnstore-data", help="directory of the LMDB database"
    )
    option.add(
        "--listen",
        action="append",
        metavar="ADDR",
        help=f"HOST:PORT or unix:PATH; repeatable; the variable takes a comma-separated list "
        f"(default: {DEFAULT_TARGET})",
    )
    option.add(
        "--allow-remote",
        action="store_true",
        help="allow listen addresses that are not loopback (use with a token and TLS)",
    )
    option.add(
        "--max-db-size",
        type=parse_size,
        default="16GiB",
        help="ceiling of the database size; writes that add data stop with RESOURCE_EXHAUSTED "
        "at it less --delete-reserve",
    )
    option.add(
        "--delete-reserve",
        type=parse_size,
        default=None,
        help="room below --max-db-size kept for clears, deletes and retention: writes that "
        "add data stop at the ceiling minus this (default: 1%% of it, at least 1MiB)",
    )
    option.add(
        "--snapshot-versions",
        type=int,
        default=4,
        help="snapshot versions kept per conversation key, the latest included",
    )
    option.add(
        "--backup-dir",
        type=Path,
        metavar="DIR",
        help="an existing directory: `turnstore backup NAME` writes NAME inside it, never "
        "elsewhere (no '..', no symbolic links below it); unset, backups are refused",
    )
    option.add("--log-format", choices=("auto", "json", "console"), default="auto", help="logs")
    option.add("--log-level", default="info", help="debug, info, warning or error")

    retention = _EnvOptions(
        serve.add_argument_group(
            "retention", "background removal of what was not written for a while (off by default)"
        )
    )
    retention.add(
        "--retain-threads-for",
        type=parse_duration,
        help="remove threads not written for this long (e.g. 30d)",
    )
    retention.add(
        "--retain-conversations-for",
        type=parse_duration,
        help="remove conversation keys not saved or deleted for this long (e.g. 90d)",
    )
    retention.add(
        "--retention-interval",
        type=parse_duration,
        default="60s",
        help="how often the retention sweep runs",
    )

    access = _EnvOptions(serve.add_argument_group("access"))
    access.add(
        "--socket-mode",
        type=lambda text: int(text, 8),
        default="600",
        help="permissions of Unix sockets, in octal (owner only by default)",
    )
    access.add(
        "--auth-token-file",
        type=Path,
        help="require this bearer token (the file's first line) on every call but health; "
        "TURNSTORE_AUTH_TOKEN may hold the token itself",
    )
    access.add("--tls-cert", type=Path, help="PEM certificate chain: serve TLS on TCP addresses")
    access.add("--tls-key", type=Path, help="PEM private key of --tls-cert")
    access.add(
        "--tls-client-ca",
        type=Path,
        help="PEM CA bundle: require client certificates signed by it (mutual TLS)",
    )
    access.add(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics over HTTP here (loopback; off by default)",
    )

    http = _EnvOptions(
        serve.add_argument_group(
            "http", "event streams for browsers, JSON reads and the web inspector (off by default)"
        )
    )
    http.add(
        "--http-listen",
        metavar="HOST:PORT",
        help="serve HTTP for browsers here; loopback only without --allow-remote",
    )
    http.add(
        "--http-allow-origin",
        action="append",
        metavar="ORIGIN",
        help="an origin (scheme://host:port) whose pages may call the HTTP API (CORS); "
        "repeatable; the variable takes a comma-separated list; none by default",
    )
    http.add(
        "--http-session-ttl",
        type=parse_duration,
        default="1h",
        help="lifetime of a browser session from POST /v1/session",
    )
    http.add(
        "--http-heartbeat",
        type=parse_duration,
        default="15s",
        help="send a comment line on idle event streams this often (proxies keep them open)",
    )

    limits = _EnvOptions(
        serve.add_argument_group(
            "limits", "each enforced with INVALID_ARGUMENT naming the field and the limit"
        )
    )
    limits.add("--max-thread-id-bytes", type=int, default=256, help="UTF-8 bytes (max 511)")
    limits.add("--max-key-bytes", type=int, default=256, help="conversation key bytes (max 511)")
    limits.add("--max-event-bytes", type=parse_size, default="1MiB", help="one encoded event")
    limits.add("--max-events-per-append", type=int, default=10_000, help="events per call")
    limits.add("--max-snapshot-bytes", type=parse_size, default="32MiB", help="one snapshot")

    ingress = _EnvOptions(
        serve.add_argument_group(
            "ingress",
            "what one message, one connection and all connections may hold "
            "(README.md, 'Bounds per client')",
        )
    )
    ingress.add(
        "--max-request-bytes",
        type=parse_size,
        help="largest request message (default: what the limits need, at least 64MiB); "
        "larger ones get RESOURCE_EXHAUSTED",
    )
    ingress.add(
        "--max-streams-per-connection",
        type=int,
        default=256,
        help="calls open at once on one connection; more wait on the client's side",
    )
    ingress.add(
        "--max-connections",
        type=int,
        default=1024,
        help="connections open at once; more are closed at once",
    )
    ingress.add(
        "--max-events-per-stream-message",
        type=int,
        default=200_000,
        help="events one AppendStream message may carry in all its items (each item is "
        "also held to the per-append limit); a message over it ends the stream",
    )
    ingress.add(
        "--large-decodes",
        type=int,
        default=2,
        help="request messages over 64KiB decoded at once on the thread pool; more wait",
    )
    followers = _EnvOptions(
        serve.add_argument_group(
            "followers",
            "bytes that replays hold in messages their readers have not taken yet",
        )
    )
    followers.add(
        "--follower-budget",
        type=parse_size,
        default="128KiB",
        help="one replay's message, whatever max_events_per_message it asks for "
        "(plus at most one event; max 4MiB)",
    )
    followers.add(
        "--followers-total-budget",
        type=parse_size,
        default="64MiB",
        help="all replays together; past it the slowest is ended with RESOURCE_EXHAUSTED "
        "(follower_too_slow) and can resume where it was",
    )
    return parser


def _http_config(args: argparse.Namespace) -> Any:
    """The HTTP listener's settings, or None when --http-listen is not given."""
    if not args.http_listen:
        if args.http_allow_origin:
            raise ValueError("--http-allow-origin needs --http-listen")
        return None
    from turnstore.server.httpapi import HttpConfig

    origins = tuple(
        origin.strip() for value in args.http_allow_origin or () for origin in value.split(",")
    )
    for origin in origins:
        if not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ValueError(f"--http-allow-origin {origin!r} is not scheme://host[:port]")
    return HttpConfig(
        listen=args.http_listen,
        allow_origins=origins,
        session_seconds=args.http_session_ttl,
        heartbeat_seconds=args.http_heartbeat,
    )


def _serve(args: argparse.Namespace) -> int:
    try:
        from turnstore.server.app import ServerConfig, TlsConfig, serve
        from turnstore.server.errors import DataDirLockedError
        from turnstore.server.followers import SendLimits
        from turnstore.server.ingress import IngressConfig
        from turnstore.server.logs import configure_logging
        from turnstore.server.values import EngineConfig, Limits
    except ImportError as error:
        print(
            f"turnstore serve needs the server extra: pip install 'turnstore[server]' ({error})",
            file=sys.stderr,
        )
        return 2
    import structlog

    configure_logging(args.log_format, args.log_level)
    log = structlog.get_logger("turnstore")
    try:
        engine_config = EngineConfig(
            data_dir=args.data_dir.resolve(),
            initial_map_bytes=min(64 << 20, args.max_db_size),
            max_map_bytes=args.max_db_size,
            limits=Limits(
                max_thread_id_bytes=args.max_thread_id_bytes,
                max_key_bytes=args.max_key_bytes,
                max_event_bytes=args.max_event_bytes,
                max_events_per_append=args.max_events_per_append,
                max_snapshot_bytes=args.max_snapshot_bytes,
            ),
            snapshot_versions_kept=args.snapshot_versions,
            retain_threads_for_seconds=args.retain_threads_for,
            retain_conversations_for_seconds=args.retain_conversations_for,
            retention_interval_seconds=args.retention_interval,
            delete_reserve_bytes=args.delete_reserve,
            backup_dir=args.backup_dir,
        )
        tls = None
        if args.tls_cert or args.tls_key:
            if not (args.tls_cert and args.tls_key):
                raise ValueError("--tls-cert and --tls-key go together")
            tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca)
        elif args.tls_client_ca:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        config = ServerConfig(
            engine=engine_config,
            listen=tuple(args.listen or (DEFAULT_TARGET,)),
            allow_remote=args.allow_remote,
            socket_mode=args.socket_mode,
            auth_token=_read_token(args.auth_token_file),
            tls=tls,
            metrics_listen=args.metrics_listen,
            ingress=IngressConfig(
                max_request_bytes=args.max_request_bytes,
                max_streams_per_connection=args.max_streams_per_connection,
                max_connections=args.max_connections,
                large_decodes=args.large_decodes,
                max_events_per_stream_message=args.max_events_per_stream_message,
            ),
            follower_limits=SendLimits(args.follower_budget, args.followers_total_budget),
            http=_http_config(args),
        )
        asyncio.run(serve(config))
    except (DataDirLockedError, ValueError, RuntimeError, OSError) as error:
        log.error("cannot_serve", error=str(error))
        return 1
    return 0


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush cannot fail."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status.

    A closed stdout (``turnstore tail ... | head -1``) ends the command
    quietly with status 0: the reader has what it wanted.
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        status: int = args.run(args)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        _quiet_stdout()
        return 0
