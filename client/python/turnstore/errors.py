"""The exceptions the client raises, under one base class.

Errors that come from a call keep the ``grpc.aio.AioRpcError`` as their
``__cause__``. :func:`turnstore._status.error_from_rpc` is the one place that
maps status codes (and the daemon's ``turnstore-error`` reason) to these
classes. The in-memory stores of :mod:`turnstore.testing` raise the same
classes for the same situations.
"""

from __future__ import annotations

import grpc


class TurnstoreError(Exception):
    """Base class of every error turnstore's client raises.

    ``code`` is the gRPC status code and ``reason`` the daemon's stable reason
    string (``"turn_finished"``, ...; the proto's ErrorReason), like the
    TypeScript client's errors. An error raised by the daemon carries what it
    sent; one raised by the client itself (or the in-memory stores) carries
    its class's defaults; ``None`` where there is none (a local format
    error, a deadline the client enforced).
    """

    code: grpc.StatusCode | None = None
    reason: str | None = None


class InvalidArgumentError(TurnstoreError, ValueError):
    """The request was malformed or over a limit; the message names which."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "invalid_argument"


class FailedPreconditionError(TurnstoreError):
    """The request conflicts with the stored state."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class TurnFinishedError(FailedPreconditionError):
    """An append targeted a turn that is already finished."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "turn_finished"


class TurnAlreadyFinishedError(FailedPreconditionError):
    """A turn was finished a second time."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "turn_already_finished"


class EventIdConflictError(FailedPreconditionError):
    """An event id is already stored in another turn of the thread."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "event_id_conflict"


class VersionConflictError(FailedPreconditionError):
    """A snapshot save expected another version, or a conditional append another
    next position of its thread; nothing was saved or appended.

    ``current_version`` is the key's version at the time (0: none stored),
    or for an append the thread's next position, or None if the daemon did
    not say (an append over the shared append stream does not).
    """

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "version_conflict"

    def __init__(self, message: str, current_version: int | None = None) -> None:
        super().__init__(message)
        self.current_version = current_version


class ThreadClearedError(TurnstoreError):
    """The thread was cleared while a streaming read of it was in progress."""

    code = grpc.StatusCode.ABORTED
    reason = "thread_cleared"


class CursorOutOfRangeError(TurnstoreError):
    """A replay cursor lies past the end of its thread: it was never handed out for it.

    The ``after`` position is at or past the thread's next position (in the
    thread's current epoch; without an epoch, also any position of a thread
    that does not exist). It comes from another thread or daemon, or from a
    database since restored from a backup. Resuming from it would skip
    events, so the daemon refuses it: replay from the start (or from the
    last position actually received from this thread).
    """

    code = grpc.StatusCode.OUT_OF_RANGE
    reason = "cursor_out_of_range"


class ResourceExhaustedError(TurnstoreError):
    """A size limit was hit (a message too large for the channel, for example)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class StorageFullError(ResourceExhaustedError):
    """The daemon's database reached its size ceiling; nothing was written."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "storage_full"


class FollowerTooSlowError(ResourceExhaustedError):
    """The daemon ended a live replay that read too slowly for its follower budget.

    Nothing is lost: replay again with ``after=replay.last_position`` and
    ``epoch=replay.epoch`` to go on exactly where it stopped.
    """

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "follower_too_slow"


class UnavailableError(TurnstoreError):
    """The daemon could not be reached, or is shutting down.

    A write that fails this way was not acknowledged; it may still have been
    committed if the daemon stopped while finishing it.
    """

    code = grpc.StatusCode.UNAVAILABLE


class UnauthenticatedError(TurnstoreError):
    """The daemon requires a bearer token and the call had none or a wrong one."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "unauthenticated"


class PermissionDeniedError(TurnstoreError):
    """The bearer token's scope does not allow the call; nothing was written.

    A write outside the token's thread ids or keys, any write with a
    read-only token, or a daemon-wide call (stats, backup) with a token that
    is not full-scope. Reads outside a scope are not refused: they find
    nothing, as for a missing thread or key.
    """

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "permission_denied"


class DeadlineExceededError(TurnstoreError):
    """The call did not complete before its deadline; it may still take effect."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ServerError(TurnstoreError):
    """Any other failure reported by the daemon (see the message and cause)."""


class SnapshotFormatError(TurnstoreError, ValueError):
    """A conversation snapshot is not a valid version-1 snapshot."""


class EventFormatError(TurnstoreError, ValueError):
    """An event envelope cannot be represented (bad JSON, unknown encoding)."""
