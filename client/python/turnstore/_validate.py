"""Argument checks shared by the gRPC and in-memory stores."""

from __future__ import annotations

import ipaddress

from turnstore.errors import InvalidArgumentError


def check_text(value: str, name: str) -> None:
    """Raise InvalidArgumentError unless ``value`` is a non-empty, UTF-8-encodable str."""
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"{name}: must be a non-empty string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidArgumentError(f"{name}: is not valid Unicode ({error.reason})") from error


def check_thread_id(thread_id: str) -> None:
    """Raise InvalidArgumentError for an empty, non-string or unencodable thread id."""
    check_text(thread_id, "thread_id")


def check_turn(turn: int, name: str = "turn") -> None:
    """Raise InvalidArgumentError for a value outside 0..2**64-1 (a turn by default)."""
    if not isinstance(turn, int) or isinstance(turn, bool) or not 0 <= turn < 1 << 64:
        raise InvalidArgumentError(f"{name}: must be an integer between 0 and 2**64-1")


def check_offset(offset: int) -> None:
    """Raise InvalidArgumentError for an offset outside 0..2**64-1."""
    check_turn(offset, "offset")


_TARGET_HELP = "a target is HOST:PORT (127.0.0.1:7070, [::1]:7070, localhost:7070) or unix:PATH"


def check_target(target: str, allow_remote: bool = True) -> None:
    """Raise InvalidArgumentError unless ``target`` is ``HOST:PORT`` or ``unix:PATH``.

    Checked before the first call, so a typo fails at once with a message
    saying what a target looks like, not seconds later with a transport error.
    Without ``allow_remote``, a ``HOST:PORT`` whose host is not loopback
    (``localhost``, ``127.x.x.x``, ``[::1]``) is refused too: the channel
    would be insecure (the TypeScript and Rust clients' rule).
    """
    if not isinstance(target, str) or not target.strip():
        raise InvalidArgumentError(f"target: must not be empty; {_TARGET_HELP}")
    if target.startswith("unix:"):
        if not target[len("unix:") :]:
            raise InvalidArgumentError("target: unix: needs a socket path, e.g. unix:/run/ts.sock")
        return
    scheme, sep, _ = target.partition("://")
    if sep and scheme.isalpha():
        raise InvalidArgumentError(
            f"target {target!r}: gRPC targets take no {scheme}:// scheme (turnstore speaks gRPC, "
            f"not HTTP; for TLS pass tls=ClientTls(...)); {_TARGET_HELP}"
        )
    host, sep, port = target.rpartition(":")
    if not sep or not host or (":" in host and not (host.startswith("[") and host.endswith("]"))):
        raise InvalidArgumentError(f"target {target!r} has no port; {_TARGET_HELP}")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidArgumentError(
            f"target {target!r}: the port must be a number from 1 to 65535; {_TARGET_HELP}"
        )
    bare_host = host[1:-1] if host.startswith("[") else host
    if not allow_remote and not _is_loopback(bare_host):
        raise InvalidArgumentError(
            f"target {target!r} is not a loopback address and the channel is insecure: "
            "use TLS (tls=ClientTls(...); --tls-ca), or allow it with allow_remote=True "
            "(--allow-remote) for a daemon run with --allow-remote on a network you trust"
        )


def _is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address; a name that must be resolved is not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
