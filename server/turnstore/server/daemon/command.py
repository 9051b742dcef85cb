"""``turnstore serve``: from parsed options to a running daemon.

The ``turnstore`` command line (:mod:`turnstore.cli.main`) parses the options
that :func:`turnstore.server.daemon.options.add_serve_arguments` defines and hands
them to :func:`run`. Importing this module needs the ``server`` extra: an
ImportError here is what the command line reports as a missing extra.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Final

import structlog

from turnstore._tokenfile import token_from_file_or_env
from turnstore.server.access.scopes import Scope, ScopeError, parse_scope
from turnstore.server.api.grpc.ingress import IngressConfig
from turnstore.server.daemon.app import ServerConfig, TlsConfig, serve
from turnstore.server.daemon.logs import configure_logging
from turnstore.server.daemon.options import DEFAULT_LISTEN
from turnstore.server.replay.followers import SendLimits
from turnstore.server.storage.config import EngineConfig, Limits, PostgresConfig
from turnstore.server.storage.errors import DatabaseUnavailableError, DataDirLockedError

if TYPE_CHECKING:
    from turnstore.server.api.http.server import HttpConfig

# The PostgreSQL DSN when neither --postgres-dsn nor --postgres-dsn-file is given.
POSTGRES_DSN_ENV: Final = "TURNSTORE_POSTGRES_DSN"


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; returns the process exit status.

    0 after a clean shutdown; 1 when the daemon cannot start or stops on a
    failure (a locked data directory, an address in use, inconsistent
    options, unreadable TLS or token files), logged as ``cannot_serve``.
    An unknown ``--log-level`` raises ValueError: there is no log to tell.
    """
    configure_logging(args.log_format, args.log_level)
    log = structlog.get_logger("turnstore")
    try:
        asyncio.run(serve(config_from_args(args)))
    except (
        DataDirLockedError,
        DatabaseUnavailableError,
        ValueError,
        RuntimeError,
        OSError,
    ) as error:
        log.error("cannot_serve", error=str(error))
        return 1
    return 0


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The daemon's configuration from the options of ``turnstore serve``.

    Raises ValueError for options that do not go together (``--tls-key``
    without ``--tls-cert``, ``--http-allow-origin`` without
    ``--http-listen``, a malformed origin, an empty token file) and OSError
    for an unreadable token file.
    """
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
            max_batch_operations=args.max_batch_operations,
        ),
        snapshot_versions_kept=args.snapshot_versions,
        retain_threads_for_seconds=args.retain_threads_for,
        retain_conversations_for_seconds=args.retain_conversations_for,
        retention_interval_seconds=args.retention_interval,
        delete_reserve_bytes=args.delete_reserve,
        backup_dir=args.backup_dir,
        commit_sync=args.commit_sync,
    )
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        tls = TlsConfig(args.tls_cert, args.tls_key, args.tls_client_ca)
    elif args.tls_client_ca:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
    return ServerConfig(
        engine=engine_config,
        postgres=_postgres_config(args),
        listen=tuple(args.listen or (DEFAULT_LISTEN,)),
        allow_remote=args.allow_remote,
        socket_mode=args.socket_mode,
        auth_token=token_from_file_or_env(args.auth_token_file),
        auth_tokens=read_auth_tokens(args.auth_tokens_file),
        tls=tls,
        metrics_listen=args.metrics_listen,
        ingress=IngressConfig(
            max_request_bytes=args.max_request_bytes,
            max_streams_per_connection=args.max_streams_per_connection,
            max_connections=args.max_connections,
            idle_seconds=args.idle_timeout,
            large_decodes=args.large_decodes,
            max_events_per_stream_message=args.max_events_per_stream_message,
        ),
        follower_limits=SendLimits(args.follower_budget, args.followers_total_budget),
        http=_http_config(args),
    )


def _postgres_config(args: argparse.Namespace) -> PostgresConfig | None:
    """The database settings of ``--backend postgres``; None for LMDB.

    The DSN comes from --postgres-dsn, else the first line of
    --postgres-dsn-file, else TURNSTORE_POSTGRES_DSN. Raises ValueError when
    none is set, or when a DSN is given to the LMDB backend.
    """
    if args.backend != "postgres":
        if args.postgres_dsn or args.postgres_dsn_file:
            raise ValueError("--postgres-dsn and --postgres-dsn-file need --backend postgres")
        return None
    dsn = args.postgres_dsn
    if not dsn and args.postgres_dsn_file is not None:
        lines = args.postgres_dsn_file.read_text().splitlines()
        dsn = lines[0].strip() if lines else ""
        if not dsn:
            raise ValueError(f"the DSN file {str(args.postgres_dsn_file)!r} is empty")
    dsn = dsn or os.environ.get(POSTGRES_DSN_ENV)
    if not dsn:
        raise ValueError(
            f"--backend postgres needs --postgres-dsn, --postgres-dsn-file or {POSTGRES_DSN_ENV}"
        )
    return PostgresConfig(dsn=dsn, pool_size=args.postgres_pool_size)


def read_auth_tokens(path: Path | None) -> tuple[tuple[str, Scope], ...]:
    """The scoped tokens of ``--auth-tokens-file``: one JSON object a line.

    Each line is ``{"token": "...", "scope": {...}}`` (``scope`` as in
    :mod:`turnstore.server.access.scopes`; left out, the full scope). Blank lines
    and lines starting with ``#`` are skipped. Raises ValueError naming the
    line for malformed JSON, a missing or empty token, an unknown field, a
    malformed scope, a repeated token or a file without tokens; OSError for
    an unreadable file.
    """
    if path is None:
        return ()
    tokens: list[tuple[str, Scope]] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{str(path)!r} line {number}"
        try:
            entry = json.loads(text)
        except ValueError as error:
            raise ValueError(f"{where}: not JSON ({error})") from None
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be a JSON object")
        unknown = sorted(set(entry) - {"token", "scope"})
        if unknown:
            raise ValueError(f"{where}: unknown field {unknown[0]!r} (known: scope, token)")
        token = entry.get("token")
        if not isinstance(token, str) or not token.strip() or token != token.strip():
            raise ValueError(f"{where}: token must be a non-empty string without blanks around it")
        if token in seen:
            raise ValueError(f"{where}: the token is given twice")
        seen.add(token)
        try:
            scope = parse_scope(entry.get("scope", {}))
        except ScopeError as error:
            raise ValueError(f"{where}: {error}") from None
        tokens.append((token, scope))
    if not tokens:
        raise ValueError(f"the tokens file {str(path)!r} holds no token")
    return tuple(tokens)


def _http_config(args: argparse.Namespace) -> HttpConfig | None:
    """The HTTP listener's settings, or None when --http-listen is not given."""
    if not args.http_listen:
        if args.http_allow_origin:
            raise ValueError("--http-allow-origin needs --http-listen")
        return None
    # Imported only here: aiohttp is loaded only by daemons that serve HTTP.
    from turnstore.server.api.http.server import HttpConfig

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
        max_connections=args.http_max_connections,
        idle_seconds=args.http_idle_timeout,
    )
