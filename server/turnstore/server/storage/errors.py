"""Exceptions raised by the storage engine, and the base of every error the daemon answers with.

The engine knows nothing of gRPC or HTTP. Each exception class names its
stable ``reason`` (the proto's ``ErrorReason`` value in lower case), here
and nowhere else; the edges give each reason its gRPC code and HTTP status
in one table (:data:`turnstore.server.api.errors.STATUS_BY_REASON`) and send
``reason`` to the client (the ``turnstore-error`` trailing metadata key, an
HTTP body's ``"error"``). Errors the engine never raises live with the layer
that does: :mod:`turnstore.server.replay.errors` (a follower ended for its
budget) and :mod:`turnstore.server.access.errors` (credentials and scopes).
"""

from __future__ import annotations

from typing import ClassVar


class DaemonError(Exception):
    """Base class of every error the daemon answers with on purpose; ``reason`` names it.

    Anything else that reaches an edge is a bug, answered as ``internal``.
    """

    reason: ClassVar[str] = "internal"


class EngineError(DaemonError):
    """Base class of every error the engine raises on purpose (``internal`` unless a subclass)."""


class InvalidArgumentError(EngineError):
    """Input is malformed or over a limit; the message names field and limit."""

    reason = "invalid_argument"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class TurnFinishedError(EngineError):
    """An append targeted a turn whose close barrier is already recorded."""

    reason = "turn_finished"

    def __init__(self, turn: int) -> None:
        super().__init__(f"cannot append to finished turn {turn}")
        self.turn = turn


class TurnAlreadyFinishedError(EngineError):
    """A turn was finished a second time."""

    reason = "turn_already_finished"

    def __init__(self, turn: int) -> None:
        super().__init__(f"turn {turn} is already finished")
        self.turn = turn


class EventIdConflictError(EngineError):
    """An event id is already stored in another turn of the thread."""

    reason = "event_id_conflict"

    def __init__(self, event_id: str, turn: int, position: int) -> None:
        super().__init__(
            f"event_id {event_id!r} is already stored in turn {turn} at position {position}"
        )
        self.event_id = event_id


class VersionConflictError(EngineError):
    """A save expected another version than the key's current one."""

    reason = "version_conflict"

    def __init__(self, key: str, expected: int, current: int) -> None:
        super().__init__(
            f"snapshot {key!r} is at version {current}, not the expected {expected}; "
            "nothing was saved"
        )
        self.key = key
        self.expected_version = expected
        self.current_version = current

    def at_version(self, current: int) -> VersionConflictError:
        """The same conflict reporting ``current`` as the key's version (a batch's
        conflict, reported with the version the key is at once the batch is undone)."""
        return VersionConflictError(self.key, self.expected_version, current)


class ThreadClearedError(EngineError):
    """The thread was cleared while a multi-part read of it was in progress."""

    reason = "thread_cleared"

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"thread {thread_id!r} was cleared during the read")
        self.thread_id = thread_id


class CursorOutOfRangeError(EngineError):
    """A replay cursor lies past the end of the thread it names.

    Positions are gap-free and never reused within one epoch, so a cursor
    at or past the thread's next position was never handed out for this
    thread: it comes from another thread, another database, or a database
    since restored from a backup. Answering it with "caught up" would skip
    the events written from the real end up to it.
    """

    reason = "cursor_out_of_range"

    def __init__(self, thread_id: str, after_position: int, next_position: int) -> None:
        held = f" (positions 0 to {next_position - 1})" if next_position else ""
        super().__init__(
            f"thread {thread_id!r} has {next_position} events{held}: no cursor after "
            f"position {after_position} was ever handed out for it; replay from the "
            "start (or from the last position you received from this thread)"
        )
        self.thread_id = thread_id
        self.after_position = after_position
        self.next_position = next_position


class StorageFullError(EngineError):
    """The database reached its configured size ceiling; nothing was written."""

    reason = "storage_full"


class DataDirLockedError(EngineError):
    """Another process holds the data directory."""

    reason = "data_dir_locked"


class EngineClosedError(EngineError):
    """The engine is closed or closing and takes no more work."""

    reason = "shutting_down"


class DatabaseUnavailableError(EngineError):
    """The database server (PostgreSQL) cannot be reached; the call may be retried.

    A write that fails so may or may not be stored (the connection can drop
    during its commit); retrying it is safe, as appends are idempotent by
    event id. The message names the database without its password.
    """

    reason = "database_unavailable"


class BackupFailedError(EngineError):
    """A backup could not be written (permissions, disk space, ...); nothing was left behind."""

    reason = "backup_failed"


class DiskIOError(EngineError):
    """The disk failed a write (EIO, or a full disk told apart from a failing one).

    Nothing of the write was committed; what was committed before is intact.
    A later write may succeed (the disk recovered, or space was freed).
    """

    reason = "disk_error"


class TurnTooLargeError(InvalidArgumentError):
    """A whole-turn read refused because the turn's events total more than allowed.

    The message names the turn's size, the limit and the paged reads. Its own
    class lets the service retry a read it first tried with a small
    allowance, and answer a GetTurn over the message limit with
    RESOURCE_EXHAUSTED as gRPC did (see ``EventStoreService.GetTurn``).
    """

    def __init__(self, turn: int, size: int, max_bytes: int) -> None:
        super().__init__(
            "turn",
            f"turn {turn} holds {size} bytes of events, over the limit of {max_bytes} bytes "
            "for one whole-turn answer; read it in pieces with ListTurns, ReadEvents or "
            "Replay (HTTP: GET /v1/threads/{thread_id}/turns pages by bytes)",
        )
        self.size = size
