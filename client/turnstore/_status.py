"""The one place that maps gRPC errors back to turnstore exceptions."""

from __future__ import annotations

from typing import Final

import grpc

from turnstore import errors

ERROR_METADATA_KEY: Final = "turnstore-error"

_BY_REASON: Final[dict[str, type[errors.TurnstoreError]]] = {
    "invalid_argument": errors.InvalidArgumentError,
    "turn_finished": errors.TurnFinishedError,
    "turn_already_finished": errors.TurnAlreadyFinishedError,
    "thread_cleared": errors.ThreadClearedError,
    "storage_full": errors.StorageFullError,
    "shutting_down": errors.UnavailableError,
}

_BY_CODE: Final[dict[grpc.StatusCode, type[errors.TurnstoreError]]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: errors.UnavailableError,
    # Only the daemon cancels with a status (a shutdown); a local cancel is
    # asyncio.CancelledError.
    grpc.StatusCode.CANCELLED: errors.UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceededError,
}


def error_from_rpc(error: grpc.aio.AioRpcError) -> errors.TurnstoreError:
    """The turnstore exception for a failed call (not raised; the caller raises it).

    The daemon's reason metadata wins over the status code; an unknown code
    gives :class:`~turnstore.errors.ServerError`. The message is the daemon's.
    """
    reason = None
    for key, value in error.trailing_metadata() or ():
        if key == ERROR_METADATA_KEY:
            reason = value if isinstance(value, str) else value.decode()
    cls = _BY_REASON.get(reason or "") or _BY_CODE.get(error.code(), errors.ServerError)
    details = error.details() or error.code().name
    return cls(details)
