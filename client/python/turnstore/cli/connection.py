"""How a client subcommand of ``turnstore`` reaches the daemon, and what it says when it cannot.

:func:`add_connection_options` gives a subcommand's parser the options that
say how to reach the daemon (target, token, TLS), each also settable by an
environment variable; :func:`resolve_connection` fills them in and checks the
target before anything is dialled; :func:`connect` builds the client (one
attempt per call, no retries); :func:`advice` says what to do after a
failure, naming the option that fixes it. Files named by options are read
here, so that their errors name the option (:class:`OptionFileError`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Final

from turnstore._auth import ClientTls
from turnstore._retry import NO_RETRY
from turnstore._tokenfile import AUTH_TOKEN_ENV, token_from_file_or_env
from turnstore._validate import check_target
from turnstore.client import DEFAULT_TARGET, TurnstoreClient
from turnstore.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    PermissionDeniedError,
    TurnstoreError,
    UnauthenticatedError,
    UnavailableError,
)

# Client-side environment variables. The client's own certificate has its
# own names: serve reads TURNSTORE_TLS_CERT/KEY as the daemon's certificate,
# and a probe run in the daemon's environment must not present that one.
TARGET_ENV: Final = "TURNSTORE_TARGET"
TOKEN_FILE_ENV: Final = "TURNSTORE_TOKEN_FILE"
TLS_CA_ENV: Final = "TURNSTORE_TLS_CA"
TLS_CERT_ENV: Final = "TURNSTORE_TLS_CLIENT_CERT"
TLS_KEY_ENV: Final = "TURNSTORE_TLS_CLIENT_KEY"
TLS_SERVER_NAME_ENV: Final = "TURNSTORE_TLS_SERVER_NAME"

# The connection options read from the environment when not given: the
# attribute, its option and its variable (so that a message names the one used).
_FROM_ENVIRONMENT: Final = (
    ("target", "--target", TARGET_ENV),
    ("token_file", "--token-file", TOKEN_FILE_ENV),
    ("tls_ca", "--tls-ca", TLS_CA_ENV),
    ("tls_cert", "--tls-cert", TLS_CERT_ENV),
    ("tls_key", "--tls-key", TLS_KEY_ENV),
    ("tls_server_name", "--tls-server-name", TLS_SERVER_NAME_ENV),
)
_PATH_OPTIONS: Final = frozenset({"token_file", "tls_ca", "tls_cert", "tls_key"})

# What to do next, after each kind of failure (see advice()).
_START_DAEMON: Final = (
    "is the daemon running there? Start it with `turnstore serve` (`make run` in a "
    "clone of turnstore), or pass --target HOST:PORT or unix:PATH (or set "
    f"{TARGET_ENV}) to reach the one that is"
)
_GIVE_TOKEN: Final = (
    "the daemon requires a bearer token: pass --token-file FILE (or set "
    f"{TOKEN_FILE_ENV}, or {AUTH_TOKEN_ENV} to the token itself)"
)


class UsageError(Exception):
    """The command line or environment is inconsistent (exit status 2)."""


class OptionFileError(OSError):
    """A file named by an option cannot be read, or is not what it must be (exit status 1).

    The message names the option (or its environment variable), the path as
    the user gave it and the reason, without Python's ``[Errno N]``.
    """

    @classmethod
    def unreadable(cls, option: str, path: Path | str, error: OSError) -> OptionFileError:
        reason = (error.strerror or str(error)).lower()
        return cls(f"cannot read {option} {str(path)!r}: {reason}")


def add_connection_options(parser: argparse.ArgumentParser, *, inherited: bool = False) -> None:
    """Add ``--target``, ``--token-file`` and the ``--tls-*`` options to ``parser``.

    Each falls back to its environment variable (shown in ``--help``; read
    by :func:`resolve_connection`); the command line wins. ``inherited``
    (for the actions of ``history KEY``) leaves an option not given unset,
    so that one given before the action (to ``history KEY``) holds.
    """
    unset: Any = argparse.SUPPRESS if inherited else None
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        metavar="ADDR",
        default=unset,
        help=f"daemon address, HOST:PORT or unix:PATH [env {TARGET_ENV}; default {DEFAULT_TARGET}]",
    )
    group.add_argument(
        "--allow-remote",
        action="store_true",
        default=argparse.SUPPRESS if inherited else False,
        help="accept a target that is not loopback without TLS (the channel is insecure: "
        "only for a daemon run with --allow-remote on a network you trust)",
    )
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        default=unset,
        help=f"send the bearer token in this file's first line [env {TOKEN_FILE_ENV}; "
        f"{AUTH_TOKEN_ENV} may hold the token itself]",
    )
    group.add_argument(
        "--tls-ca",
        type=Path,
        metavar="PEM",
        default=unset,
        help=f"PEM CA bundle that signed the daemon's certificate: connect with TLS "
        f"[env {TLS_CA_ENV}]",
    )
    group.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PEM",
        default=unset,
        help=f"PEM certificate chain of this client, for mutual TLS [env {TLS_CERT_ENV}]",
    )
    group.add_argument(
        "--tls-key",
        type=Path,
        metavar="PEM",
        default=unset,
        help=f"PEM private key of --tls-cert [env {TLS_KEY_ENV}]",
    )
    group.add_argument(
        "--tls-server-name",
        metavar="NAME",
        default=unset,
        help=f"name to check the daemon's certificate against, instead of the target's host "
        f"[env {TLS_SERVER_NAME_ENV}]",
    )


def resolve_connection(args: argparse.Namespace) -> None:
    """Fill the connection options not given from the environment, then check the target.

    Records where each came from in ``args.option_source`` (the option, its
    environment variable, or ``the default target``) for messages. Raises
    UsageError for a target that is not ``HOST:PORT`` or ``unix:PATH`` (a
    port out of range, no port, a name without one: nothing is looked up or
    dialled) or not loopback without TLS or ``--allow-remote``; every client
    command, ``health`` included, goes through here first.
    """
    sources: dict[str, str] = {}
    for dest, option, variable in _FROM_ENVIRONMENT:
        value = getattr(args, dest, None)
        if value is not None:
            sources[dest] = option
        elif os.environ.get(variable):
            value = os.environ[variable]
            sources[dest] = variable
        setattr(args, dest, Path(value) if value is not None and dest in _PATH_OPTIONS else value)
    if args.target is None:
        args.target = DEFAULT_TARGET
        sources["target"] = "the default target"
    args.option_source = sources
    args.allow_remote = bool(getattr(args, "allow_remote", False))
    try:
        check_target(args.target, allow_remote=args.allow_remote or args.tls_ca is not None)
    except InvalidArgumentError as error:
        where = sources["target"]
        raise UsageError(str(error) if where == "--target" else f"{error} (from {where})") from None


def option_name(args: argparse.Namespace, dest: str, option: str) -> str:
    """``option``, or the environment variable that gave ``dest`` its value."""
    sources: dict[str, str] = getattr(args, "option_source", {})
    return sources.get(dest, option)


def _check_pem(args: argparse.Namespace, dest: str, option: str) -> None:
    """Raise OptionFileError unless the file of ``dest`` can be read and holds PEM data.

    Checked here so that the message names the option: grpc would log its
    own source files' names on stderr and fail the call as unavailable.
    """
    path: Path | None = getattr(args, dest)
    if path is None:
        return
    name = option_name(args, dest, option)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise OptionFileError.unreadable(name, path, error) from None
    if b"-----BEGIN" not in data:
        raise OptionFileError(f"{name} {str(path)!r} is not a PEM file (no -----BEGIN line)")


def client_tls(args: argparse.Namespace) -> ClientTls | None:
    """The TLS settings of the options, or None (plaintext) when no CA is given.

    Raises UsageError for a client certificate without its key (or the
    other way round), or either without a CA; OptionFileError naming the
    option for a file that cannot be read.
    """
    if args.tls_ca is None:
        if args.tls_cert is not None or args.tls_key is not None:
            raise UsageError(f"--tls-cert and --tls-key need --tls-ca (or {TLS_CA_ENV})")
        if args.tls_server_name:
            raise UsageError(f"--tls-server-name needs --tls-ca (or {TLS_CA_ENV})")
        return None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together (mutual TLS)")
    for dest, option in (
        ("tls_ca", "--tls-ca"),
        ("tls_cert", "--tls-cert"),
        ("tls_key", "--tls-key"),
    ):
        _check_pem(args, dest, option)
    return ClientTls(
        args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name
    )


def bearer_token(args: argparse.Namespace) -> str | None:
    """The token of ``--token-file`` (or its variables), or None.

    Raises OptionFileError naming the option for a file that cannot be read,
    UsageError for an empty one.
    """
    option = option_name(args, "token_file", "--token-file")
    try:
        return token_from_file_or_env(args.token_file)
    except OSError as error:
        raise OptionFileError.unreadable(option, args.token_file, error) from None
    except ValueError as error:
        raise UsageError(f"{option}: {error}; its first line must hold the token") from None


def connect(args: argparse.Namespace, timeout: float | None = 30.0) -> TurnstoreClient:
    """A client of the daemon the options name; construct it inside the event loop.

    Its calls are not retried (:data:`turnstore._retry.NO_RETRY`): every
    command tries once and says at once when the daemon cannot be reached
    (docs/cli.md, "Retries"); ``tail --follow`` reconnects by itself.
    """
    return TurnstoreClient(
        args.target,
        timeout=timeout,
        retry=NO_RETRY,
        token=bearer_token(args),
        tls=client_tls(args),
        allow_remote=args.allow_remote,
    )


def advice(error: TurnstoreError, args: argparse.Namespace) -> str | None:
    """What to do next after ``error``, naming the option that fixes it; None if nothing useful.

    Unreachable: start the daemon or pass ``--target`` (or check the TLS
    options, when TLS is on: a handshake failure looks the same).
    Unauthenticated: which token option. Permission denied: the token's
    scope. Deadline: the daemon is busy or the target is wrong. An error
    wrapping another (an import's TransferError at a line) is advised on
    by the one it wraps.
    """
    while isinstance(error.__cause__, TurnstoreError):
        error = error.__cause__
    target = repr(args.target)  # fail() escapes what a terminal would act on
    if isinstance(error, UnavailableError):
        if getattr(args, "tls_ca", None) is not None:
            # A failed handshake looks the same as no daemon at all.
            return (
                f"{_START_DAEMON}; if a daemon runs at {target}, check that --tls-ca, "
                "--tls-cert, --tls-key and --tls-server-name match its TLS settings"
            )
        return _START_DAEMON
    if isinstance(error, UnauthenticatedError):
        if getattr(args, "token_file", None) is not None or os.environ.get(AUTH_TOKEN_ENV):
            given = (
                option_name(args, "token_file", "--token-file")
                if args.token_file is not None
                else AUTH_TOKEN_ENV
            )
            return (
                f"the daemon refused the token from {given}: pass the token of the "
                "daemon's --auth-token-file with --token-file FILE (or set "
                f"{TOKEN_FILE_ENV}, or {AUTH_TOKEN_ENV} to the token itself)"
            )
        return _GIVE_TOKEN
    if isinstance(error, PermissionDeniedError):
        return (
            "the token's scope does not allow this: pass a token whose scope does "
            "with --token-file FILE (daemon-wide commands need a full-scope token)"
        )
    if isinstance(error, DeadlineExceededError):
        return f"the daemon at {target} did not answer in time: is it overloaded or stuck?"
    return None
