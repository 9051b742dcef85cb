"""``turnstore health``: is a daemon up and serving (for probes)?

It asks the daemon's ``grpc.health.v1`` service over a channel of its own,
with the target, TLS options and failures of every other command (see
:mod:`turnstore.cli.connection`); it needs no token, no server extra and no
grpcio-health-checking.
"""

from __future__ import annotations

import argparse
from typing import Any, Final

import grpc

from turnstore._status import error_from_rpc
from turnstore.cli.common import add_parser, handle, seconds
from turnstore.cli.connection import client_tls
from turnstore.errors import ServerError

# grpc.health.v1 by hand, so that `health` needs neither the server extra
# nor grpcio-health-checking: HealthCheckRequest{service: ""} encodes as
# empty bytes, and HealthCheckResponse's field 1 (varint) is the status.
_HEALTH_CHECK: Final = "/grpc.health.v1.Health/Check"
_SERVING_STATUS: Final = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
_SERVING: Final = 1


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def health_status(response: bytes) -> int:
    """The ``status`` of an encoded ``HealthCheckResponse`` (0, UNKNOWN, when absent).

    Other fields are skipped; raises ValueError for malformed bytes.
    """
    status, at = 0, 0
    while at < len(response):
        tag, at = _varint(response, at)
        wire = tag & 7
        if wire == 0:
            value, at = _varint(response, at)
            if tag >> 3 == 1:
                status = value
        elif wire == 2:
            length, at = _varint(response, at)
            at += length
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
    if at != len(response):
        raise ValueError("truncated field")
    return status


async def _health(args: argparse.Namespace) -> int:
    tls = client_tls(args)
    options: list[tuple[str, Any]] = []
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    channel = (
        grpc.aio.secure_channel(args.target, tls.credentials(), options=options)
        if tls is not None
        else grpc.aio.insecure_channel(args.target, options=options)
    )
    async with channel:
        check = channel.unary_unary(_HEALTH_CHECK)  # bytes in, bytes out
        try:
            response = await check(b"", timeout=args.timeout)
        except grpc.aio.AioRpcError as error:
            # Named and advised as for every other command (run_async).
            raise error_from_rpc(error) from None
    try:
        status = health_status(response)
    except ValueError as error:  # not a usage error (exit 2): the answer is bad
        raise ServerError(f"malformed health response from {args.target!r}: {error}") from None
    print(_SERVING_STATUS.get(status, f"status {status}"))
    return 0 if status == _SERVING else 1


def add_health_command(commands: Any) -> None:
    """Add ``health`` to ``commands``."""
    health = add_parser(
        commands,
        "health",
        help="check that a daemon is up and serving (for probes)",
        description=(
            "Ask the daemon's grpc.health.v1 service; print its status and exit 0 "
            "when SERVING, else 1. Needs no token."
        ),
    )
    health.add_argument(
        "--timeout",
        type=seconds,
        default=5.0,
        metavar="SECONDS",
        help="seconds to wait, above 0 (default 5)",
    )
    handle(health, _health)
