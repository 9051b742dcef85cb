"""The one table of the edges: each error reason's gRPC status code and HTTP status.

Every error the daemon answers with on purpose is a
:class:`~turnstore.server.storage.errors.DaemonError` whose class names its
``reason`` (the proto's ``ErrorReason`` in lower case) and lives with the
layer that raises it: the engine's in :mod:`turnstore.server.storage.errors`,
the follower budget's in :mod:`turnstore.server.replay.errors`, the
credentials' in :mod:`turnstore.server.access.errors`. The gRPC edge
(:mod:`turnstore.server.api.grpc.servicer`) and the HTTP edge
(:mod:`turnstore.server.api.http.common`) both take their statuses from
:data:`STATUS_BY_REASON`; ``tests/test_error_vocabulary.py`` holds it, the
proto and the clients' maps in step.

The HTTP listener only reads, so the write reasons never reach it; they
have statuses all the same, so that no reason is left without one.

The gRPC codes are named, not ``grpc.StatusCode`` members, so that the HTTP
edge, which takes its statuses from here too, never loads grpc
(``tests/test_layers.py``); the gRPC edge looks the member up by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from turnstore.server.access.errors import PermissionDeniedError, UnauthenticatedError
from turnstore.server.replay.errors import FollowerTooSlowError
from turnstore.server.storage.errors import (
    BackupFailedError,
    CursorOutOfRangeError,
    DaemonError,
    DatabaseUnavailableError,
    DataDirLockedError,
    DiskIOError,
    EngineClosedError,
    EventIdConflictError,
    InvalidArgumentError,
    StorageFullError,
    ThreadClearedError,
    TurnAlreadyFinishedError,
    TurnFinishedError,
    VersionConflictError,
)

# The gRPC status codes the table uses (names of grpc.StatusCode members).
GrpcCode = Literal[
    "INVALID_ARGUMENT",
    "FAILED_PRECONDITION",
    "ABORTED",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "OUT_OF_RANGE",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "INTERNAL",
]


@dataclass(frozen=True)
class EdgeStatus:
    """How one reason is answered: its gRPC status code's name and its HTTP status."""

    grpc: GrpcCode
    http: int


# Reason -> statuses. A subclass without a reason of its own (TurnTooLargeError)
# is answered with its base's.
STATUS_BY_REASON: Final[dict[str, EdgeStatus]] = {
    InvalidArgumentError.reason: EdgeStatus("INVALID_ARGUMENT", 400),
    TurnFinishedError.reason: EdgeStatus("FAILED_PRECONDITION", 409),
    TurnAlreadyFinishedError.reason: EdgeStatus("FAILED_PRECONDITION", 409),
    EventIdConflictError.reason: EdgeStatus("FAILED_PRECONDITION", 409),
    VersionConflictError.reason: EdgeStatus("FAILED_PRECONDITION", 409),
    BackupFailedError.reason: EdgeStatus("FAILED_PRECONDITION", 500),
    ThreadClearedError.reason: EdgeStatus("ABORTED", 409),
    StorageFullError.reason: EdgeStatus("RESOURCE_EXHAUSTED", 507),
    FollowerTooSlowError.reason: EdgeStatus("RESOURCE_EXHAUSTED", 503),
    EngineClosedError.reason: EdgeStatus("UNAVAILABLE", 503),
    DataDirLockedError.reason: EdgeStatus("UNAVAILABLE", 503),
    DiskIOError.reason: EdgeStatus("UNAVAILABLE", 503),
    DatabaseUnavailableError.reason: EdgeStatus("UNAVAILABLE", 503),
    CursorOutOfRangeError.reason: EdgeStatus("OUT_OF_RANGE", 416),
    UnauthenticatedError.reason: EdgeStatus("UNAUTHENTICATED", 401),
    PermissionDeniedError.reason: EdgeStatus("PERMISSION_DENIED", 403),
    DaemonError.reason: EdgeStatus("INTERNAL", 500),
}

INTERNAL: Final = STATUS_BY_REASON[DaemonError.reason]


def status_of(error: DaemonError) -> EdgeStatus:
    """The statuses of ``error``'s reason (those of ``internal`` for a reason not listed)."""
    return STATUS_BY_REASON.get(error.reason, INTERNAL)
