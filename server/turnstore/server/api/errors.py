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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import grpc

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


@dataclass(frozen=True)
class EdgeStatus:
    """How one reason is answered: its gRPC status code and its HTTP status."""

    grpc: grpc.StatusCode
    http: int


_Code = grpc.StatusCode

# Reason -> statuses. A subclass without a reason of its own (TurnTooLargeError)
# is answered with its base's.
STATUS_BY_REASON: Final[dict[str, EdgeStatus]] = {
    InvalidArgumentError.reason: EdgeStatus(_Code.INVALID_ARGUMENT, 400),
    TurnFinishedError.reason: EdgeStatus(_Code.FAILED_PRECONDITION, 409),
    TurnAlreadyFinishedError.reason: EdgeStatus(_Code.FAILED_PRECONDITION, 409),
    EventIdConflictError.reason: EdgeStatus(_Code.FAILED_PRECONDITION, 409),
    VersionConflictError.reason: EdgeStatus(_Code.FAILED_PRECONDITION, 409),
    BackupFailedError.reason: EdgeStatus(_Code.FAILED_PRECONDITION, 500),
    ThreadClearedError.reason: EdgeStatus(_Code.ABORTED, 409),
    StorageFullError.reason: EdgeStatus(_Code.RESOURCE_EXHAUSTED, 507),
    FollowerTooSlowError.reason: EdgeStatus(_Code.RESOURCE_EXHAUSTED, 503),
    EngineClosedError.reason: EdgeStatus(_Code.UNAVAILABLE, 503),
    DataDirLockedError.reason: EdgeStatus(_Code.UNAVAILABLE, 503),
    DiskIOError.reason: EdgeStatus(_Code.UNAVAILABLE, 503),
    DatabaseUnavailableError.reason: EdgeStatus(_Code.UNAVAILABLE, 503),
    CursorOutOfRangeError.reason: EdgeStatus(_Code.OUT_OF_RANGE, 416),
    UnauthenticatedError.reason: EdgeStatus(_Code.UNAUTHENTICATED, 401),
    PermissionDeniedError.reason: EdgeStatus(_Code.PERMISSION_DENIED, 403),
    DaemonError.reason: EdgeStatus(_Code.INTERNAL, 500),
}

INTERNAL: Final = STATUS_BY_REASON[DaemonError.reason]


def status_of(error: DaemonError) -> EdgeStatus:
    """The statuses of ``error``'s reason (those of ``internal`` for a reason not listed)."""
    return STATUS_BY_REASON.get(error.reason, INTERNAL)
