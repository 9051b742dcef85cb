"""turnstore: a durable storage daemon for AI agent event streams and snapshots.

The public API of the Python client::

    from turnstore import AgentEventEnvelope, TurnstoreClient

    async with TurnstoreClient("127.0.0.1:7070") as client:
        await client.events.append("thread-1", 1, AgentEventEnvelope.new({"type": "text_delta"}))

``turnstore.testing`` holds in-memory stores with the same contracts;
``turnstore.server`` (installed with the ``server`` extra) is the daemon.
"""

from pkgutil import extend_path

# The daemon's package `turnstore.server` may live in another source root.
__path__ = extend_path(__path__, __name__)

from turnstore._auth import ClientTls
from turnstore._retry import RetryPolicy
from turnstore.appender import EventAppender
from turnstore.client import TurnstoreClient
from turnstore.errors import (
    CursorOutOfRangeError,
    DeadlineExceededError,
    EventFormatError,
    EventIdConflictError,
    FailedPreconditionError,
    FollowerTooSlowError,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
    ServerError,
    SnapshotFormatError,
    StorageFullError,
    ThreadClearedError,
    TurnAlreadyFinishedError,
    TurnFinishedError,
    TurnstoreError,
    UnauthenticatedError,
    UnavailableError,
    VersionConflictError,
)
from turnstore.events import TurnstoreEventStore
from turnstore.history import BatchDelete, BatchDeletePrefix, BatchSave, TurnstoreHistoryStore
from turnstore.models import (
    AgentEventEnvelope,
    ConversationSnapshot,
    StoredTurnEvents,
)
from turnstore.protocols import EventStore, HistoryStore
from turnstore.replay import CaughtUp, Replay, ReplayItem, ThreadCleared, TurnFinished
from turnstore.results import BatchResult, Blob, SnapshotVersionInfo, StoredEvent, VersionedSnapshot

__all__ = [
    "AgentEventEnvelope",
    "BatchDelete",
    "BatchDeletePrefix",
    "BatchResult",
    "BatchSave",
    "Blob",
    "CaughtUp",
    "ClientTls",
    "ConversationSnapshot",
    "CursorOutOfRangeError",
    "DeadlineExceededError",
    "EventAppender",
    "EventFormatError",
    "EventIdConflictError",
    "EventStore",
    "FailedPreconditionError",
    "FollowerTooSlowError",
    "HistoryStore",
    "InvalidArgumentError",
    "PermissionDeniedError",
    "Replay",
    "ReplayItem",
    "ResourceExhaustedError",
    "RetryPolicy",
    "ServerError",
    "SnapshotFormatError",
    "SnapshotVersionInfo",
    "StorageFullError",
    "StoredEvent",
    "StoredTurnEvents",
    "ThreadCleared",
    "ThreadClearedError",
    "TurnAlreadyFinishedError",
    "TurnFinished",
    "TurnFinishedError",
    "TurnstoreClient",
    "TurnstoreError",
    "TurnstoreEventStore",
    "TurnstoreHistoryStore",
    "UnauthenticatedError",
    "UnavailableError",
    "VersionConflictError",
    "VersionedSnapshot",
]
