"""The one place that maps gRPC errors back to turnstore exceptions."""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Final

import grpc

from turnstore import errors

ERROR_METADATA_KEY: Final = "turnstore-error"
CURRENT_VERSION_METADATA_KEY: Final = "turnstore-current-version"

_BY_REASON: Final[dict[str, type[errors.TurnstoreError]]] = {
    "invalid_argument": errors.InvalidArgumentError,
    "turn_finished": errors.TurnFinishedError,
    "turn_already_finished": errors.TurnAlreadyFinishedError,
    "event_id_conflict": errors.EventIdConflictError,
    "version_conflict": errors.VersionConflictError,
    "thread_cleared": errors.ThreadClearedError,
    "storage_full": errors.StorageFullError,
    "follower_too_slow": errors.FollowerTooSlowError,
    "shutting_down": errors.UnavailableError,
    "database_unavailable": errors.UnavailableError,
    "disk_error": errors.UnavailableError,
    "data_dir_locked": errors.UnavailableError,
    "backup_failed": errors.FailedPreconditionError,
    "unauthenticated": errors.UnauthenticatedError,
    "permission_denied": errors.PermissionDeniedError,
    "internal": errors.ServerError,
    "cursor_out_of_range": errors.CursorOutOfRangeError,
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
    grpc.StatusCode.UNAUTHENTICATED: errors.UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDeniedError,
}


def error_from_status(
    code: grpc.StatusCode, reason: str | None, message: str
) -> errors.TurnstoreError:
    """The turnstore exception for a status (not raised; the caller raises it).

    The daemon's reason wins over the status code; an unknown code gives
    :class:`~turnstore.errors.ServerError`. The message is the daemon's.
    """
    cls = _BY_REASON.get(reason or "") or _BY_CODE.get(code, errors.ServerError)
    error = cls(message or code.name)
    error.code = code
    error.reason = reason or None
    return error


# grpc's words for a channel that found no daemon: the address it tried and
# the OS cause follow the status name.
_CONNECT_FAILED: Final = re.compile(
    r"failed to connect to all addresses; last error: [A-Z_]+: (?:ipv[46]:)?(?P<cause>.+)", re.S
)


def _transport_message(details: str) -> str:
    """``cannot reach ADDRESS: CAUSE`` for grpc's connect failure; else ``details``."""
    matched = _CONNECT_FAILED.match(details)
    return f"cannot reach {matched['cause']}" if matched else details


def error_from_rpc(error: grpc.aio.AioRpcError) -> errors.TurnstoreError:
    """The turnstore exception for a failed call, from its status and metadata.

    A call that found no daemon says ``cannot reach ADDRESS: CAUSE`` (the
    OS error, e.g. ``Connection refused``).
    """
    metadata = {
        key: value if isinstance(value, str) else value.decode()
        for key, value in error.trailing_metadata() or ()
    }
    details = error.details() or ""
    if error.code() == grpc.StatusCode.UNAVAILABLE and ERROR_METADATA_KEY not in metadata:
        details = _transport_message(details)
    mapped = error_from_status(error.code(), metadata.get(ERROR_METADATA_KEY), details)
    current = metadata.get(CURRENT_VERSION_METADATA_KEY, "")
    if isinstance(mapped, errors.VersionConflictError) and current.isdigit():
        mapped.current_version = int(current)
    return mapped


async def mapped_stream(call: AsyncIterable[Any]) -> AsyncIterator[Any]:
    """The messages of a streaming call, its gRPC error raised as a turnstore one."""
    try:
        async for message in call:
            yield message
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error) from error


_CODES_BY_NUMBER: Final = {code.value[0]: code for code in grpc.StatusCode}


def error_from_item(code: int, reason: str, message: str) -> errors.TurnstoreError:
    """The turnstore exception for a rejected AppendStream item.

    Its ``__cause__`` is the ``grpc.aio.AioRpcError`` the unary call would
    have failed with, so stream and unary errors look the same.
    """
    status = _CODES_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    mapped = error_from_status(status, reason, message)
    mapped.__cause__ = grpc.aio.AioRpcError(
        status,
        grpc.aio.Metadata(),
        grpc.aio.Metadata((ERROR_METADATA_KEY, reason)),
        message,
    )
    return mapped
