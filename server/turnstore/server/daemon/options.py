"""The options of ``turnstore serve``: flags, TURNSTORE_* variables, defaults.

:func:`add_serve_arguments` gives the ``serve`` parser of the ``turnstore``
command its options; :func:`turnstore.server.daemon.command.config_from_args` turns
the parsed options into a :class:`~turnstore.server.daemon.app.ServerConfig`.

This module imports only the standard library, so that ``turnstore serve
--help`` still lists the options where the server's dependencies (LMDB,
structlog, ...) are not installed and the command can only say so.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any, Final

# The address the daemon listens on without --listen. The client's
# DEFAULT_TARGET names the same address; it is not imported from there
# because the server depends on no client code (tests/test_serve_options.py
# checks both).
DEFAULT_LISTEN: Final = "127.0.0.1:7070"

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


class _AppendReplacingDefault(argparse.Action):
    """``append``, except that the first value given replaces the default list.

    Plain ``append`` adds to its default, so ``--listen`` on the command line
    added to ``TURNSTORE_LISTEN``'s addresses instead of winning over them,
    unlike every other flag.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        given: set[str] = namespace.__dict__.setdefault("_appended_flags", set())
        items = list(getattr(namespace, self.dest) or []) if self.dest in given else []
        given.add(self.dest)
        setattr(namespace, self.dest, [*items, values])


class _EnvOptions:
    """Adds options that a TURNSTORE_<NAME> environment variable can also set.

    The command line wins over the variable, the variable over the default
    (a repeatable flag's values replace the variable's list, not extend it);
    ``--help`` names the variable and shows the default. The variables are
    read when the option is added, that is when the parser is built.
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
            kwargs["action"] = _AppendReplacingDefault
            if raw:
                kwargs["default"] = [item.strip() for item in raw.split(",") if item.strip()]
        elif raw is not None:
            kwargs["default"] = raw
        shown = kwargs.get("default")
        suffix = f" [env {env}" + (f"; default {shown}]" if shown not in (None, False) else "]")
        self._group.add_argument(flag, help=help + suffix, **kwargs)


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    """Add every option of ``turnstore serve`` to ``serve``, in its help's groups."""
    option = _EnvOptions(serve)
    option.add(
        "--data-dir", type=Path, default="turnstore-data", help="directory of the LMDB database"
    )
    option.add(
        "--listen",
        action="append",
        metavar="ADDR",
        help=f"HOST:PORT or unix:PATH; repeatable; the variable takes a comma-separated list "
        f"(default: {DEFAULT_LISTEN})",
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
    _add_backend(serve)
    _add_retention(serve)
    _add_access(serve)
    _add_http(serve)
    _add_limits(serve)
    _add_ingress(serve)
    _add_followers(serve)


def _add_backend(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group(
        "backend", "where the daemon stores: embedded LMDB (default) or a shared PostgreSQL"
    )
    backend = _EnvOptions(group)
    backend.add(
        "--backend",
        choices=("lmdb", "postgres"),
        default="lmdb",
        help="lmdb: --data-dir on this host; postgres: a database any number of daemons share",
    )
    backend.add(
        "--commit-sync",
        type=_commit_sync,
        # lmdb: journal measured no faster on this project's machine (docs/one-sync.md).
        default="lmdb",
        metavar="{lmdb,journal}",
        help="lmdb backend: how a commit is made durable before it is acknowledged; lmdb: "
        "LMDB's data sync, then its meta page's (two in sequence); journal: LMDB's data sync "
        "and a redo-journal record's sync in parallel (one sync's wait). docs/one-sync.md",
    )
    # Not through _EnvOptions: its help would show the variable's value, password and all.
    group.add_argument(
        "--postgres-dsn",
        metavar="DSN",
        help="libpq connection string or URI of the database (--backend postgres) "
        "[env TURNSTORE_POSTGRES_DSN]",
    )
    backend.add(
        "--postgres-dsn-file",
        type=Path,
        metavar="FILE",
        help="a file whose first line is the DSN (keeps a password out of the process list)",
    )
    backend.add(
        "--postgres-pool-size",
        type=int,
        default=8,
        help="connections this daemon's reads may hold at once (writes and LISTEN use one each)",
    )


def _commit_sync(text: str) -> str:
    # "unsafe-unjournaled" (unlisted) is for tests/test_power_cut.py: one sync, no journal.
    if text not in ("journal", "lmdb", "unsafe-unjournaled"):
        raise argparse.ArgumentTypeError(f"expected journal or lmdb, not {text!r}")
    return text


def _add_retention(serve: argparse.ArgumentParser) -> None:
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


def _add_access(serve: argparse.ArgumentParser) -> None:
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
    access.add(
        "--auth-tokens-file",
        type=Path,
        metavar="FILE",
        help="more bearer tokens, each with a scope: one JSON object a line, "
        '{"token": "...", "scope": {...}}; a scope has "thread_prefix" and/or "threads" '
        '(a list), "key_prefix" and/or "keys", and "read_only"; {} or no scope is full '
        "access; a scope naming only threads reaches no conversation key (add "
        '"key_prefix": "" for all); works with --auth-token-file (a full-scope token)',
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


def _add_http(serve: argparse.ArgumentParser) -> None:
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
        "--http-max-connections",
        type=int,
        help="HTTP connections open at once; more are closed at once (default: 512 where "
        "the open-file limit leaves room for it, else what fits)",
    )
    http.add(
        "--http-idle-timeout",
        type=parse_duration,
        default="30s",
        help="close an HTTP connection without a complete request this long after it opened "
        "or after its last response (idle keep-alive, and headers trickled slowly)",
    )
    http.add(
        "--http-heartbeat",
        type=parse_duration,
        default="15s",
        help="send a comment line on idle event streams this often (proxies keep them open)",
    )


def _add_limits(serve: argparse.ArgumentParser) -> None:
    limits = _EnvOptions(
        serve.add_argument_group(
            "limits", "each enforced with INVALID_ARGUMENT naming the field and the limit"
        )
    )
    limits.add("--max-thread-id-bytes", type=int, default=256, help="UTF-8 bytes (max 511)")
    limits.add("--max-key-bytes", type=int, default=1000, help="conversation key bytes (max 1000)")
    limits.add("--max-event-bytes", type=parse_size, default="1MiB", help="one encoded event")
    limits.add("--max-events-per-append", type=int, default=10_000, help="events per call")
    limits.add(
        "--max-batch-operations", type=int, default=1000, help="operations per history Batch"
    )
    limits.add("--max-snapshot-bytes", type=parse_size, default="32MiB", help="one snapshot")


def _add_ingress(serve: argparse.ArgumentParser) -> None:
    ingress = _EnvOptions(
        serve.add_argument_group(
            "ingress",
            "what one message, one connection and all connections may hold "
            "(docs/daemon.md, 'Bounds per client')",
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
        help="gRPC connections open at once; more are closed at once (default: 1024 where "
        "the open-file limit leaves room for it, else what fits; a value that does not fit "
        "the limit is refused at start)",
    )
    ingress.add(
        "--idle-timeout",
        type=parse_duration,
        default="5m",
        help="close gRPC connections that have had no call open for this long (clients "
        "reconnect by themselves)",
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


def _add_followers(serve: argparse.ArgumentParser) -> None:
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
