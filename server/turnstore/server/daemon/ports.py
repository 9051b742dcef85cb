"""Probe listen addresses before anything is created on disk.

The daemon opens its data directory before gRPC binds its ports, so a port
in use would otherwise be found only after a fresh data directory was
made. :func:`check_listen_free` tries each address the way the listener
will, and closes what it tried at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterable


class AddressInUseError(OSError):
    """A listen address is taken by another process."""

    def __init__(self, address: str) -> None:
        super().__init__(errno.EADDRINUSE, f"cannot listen on {address!r}: address already in use")


def _probe_tcp(address: str) -> None:
    host, _, port_text = address.rpartition(":")
    if not port_text.isdigit() or int(port_text) == 0:
        return  # malformed (the listener says so), or any free port
    port = int(port_text)
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as probe:
            # gRPC sets SO_REUSEADDR too: a port in TIME_WAIT is free for it.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(sockaddr)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise AddressInUseError(address) from error
                # Anything else (no IPv6 here, say) is for the listener to
                # report, or to work around as it does.


def _probe_unix(address: str) -> None:
    # gRPC replaces a socket file it finds: refuse one a live server answers on.
    path = address[len("unix:") :]
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return
    except OSError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return  # a stale file from a daemon that did not clean up
        with contextlib.suppress(OSError):
            probe.shutdown(socket.SHUT_RDWR)
    raise AddressInUseError(address)


def check_listen_free(addresses: Iterable[str]) -> None:
    """Raise AddressInUseError for the first address another process listens on.

    ``addresses`` are checked well-formed ``HOST:PORT`` or ``unix:PATH``
    listen addresses; port 0 is always free. Other failures of the probe
    (an address family this host lacks, permissions) are left to the
    listener to report; an unknown host raises socket.gaierror.
    """
    for address in addresses:
        if address.startswith("unix:"):
            _probe_unix(address)
        else:
            _probe_tcp(address)
