"""The exceptions the client raises, under one base class.

Errors that come from a call keep the ``grpc.aio.AioRpcError`` as their
``__cause__``. :func:`turnstore._status.error_from_rpc` is the one place that
maps status codes (and the daemon's ``turnstore-error`` reason) to these
classes. The in-memory stores of :mod:`turnstore.testing` raise the same
classes for the same situations.
"""

from __future__ import annotations


class TurnstoreError(Exception):
    """Base class of every error turnstore's client raises."""


class InvalidArgumentError(TurnstoreError, ValueError):
    """The request was malformed or over a limit; the message names which."""


class FailedPreconditionError(TurnstoreError):
    """The request conflicts with the stored state."""


class TurnFinishedError(FailedPreconditionError):
    """An append targeted a turn that is already finished."""


class TurnAlreadyFinishedError(FailedPreconditionError):
    """A turn was finished a second time."""


class EventIdConflictError(FailedPreconditionError):
    """An event id is already stored in another turn of the thread."""


class VersionConflictError(FailedPreconditionError):
    """A snapshot save expected another version; nothing was saved.

    ``current_version`` is the key's version at the time (0: none stored),
    or None if the daemon did not say.
    """

    def __init__(self, message: str, current_version: int | None = None) -> None:
        super().__init__(message)
        self.current_version = current_version


class ThreadClearedError(TurnstoreError):
    """The thread was cleared while a streaming read of it was in progress."""


class ResourceExhaustedError(TurnstoreError):
    """A size limit was hit (a message too large for the channel, for example)."""


class StorageFullError(ResourceExhaustedError):
    """The daemon's database reached its size ceiling; nothing was written."""


class FollowerTooSlowError(ResourceExhaustedError):
    """The daemon ended a live replay that read too slowly for its follower budget.

    Nothing is lost: replay again with ``after=replay.last_position`` and
    ``epoch=replay.epoch`` to go on exactly where it stopped.
    """


class UnavailableError(TurnstoreError):
    """The daemon could not be reached, or is shutting down.

    A write that fails this way was not acknowledged; it may still have been
    committed if the daemon stopped while finishing it.
    """


class UnauthenticatedError(TurnstoreError):
    """The daemon requires a bearer token and the call had none or a wrong one."""


class DeadlineExceededError(TurnstoreError):
    """The call did not complete before its deadline; it may still take effect."""


class ServerError(TurnstoreError):
    """Any other failure reported by the daemon (see the message and cause)."""


class SnapshotFormatError(TurnstoreError, ValueError):
    """A conversation snapshot is not a valid version-1 snapshot."""


class EventFormatError(TurnstoreError, ValueError):
    """An event envelope cannot be represented (bad JSON, unknown encoding)."""
