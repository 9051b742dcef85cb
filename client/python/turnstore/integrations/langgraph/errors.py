"""The error TurnstoreSaver raises when a thread moved on under a writer."""

from __future__ import annotations

from turnstore.errors import VersionConflictError

__all__ = ["CheckpointConflictError"]


class CheckpointConflictError(VersionConflictError):
    """A checkpoint was refused: the thread moved on since its writer read it.

    Raised by ``put`` when another writer advanced the namespace's head
    first (two runs on one thread), or when the checkpoint continues from
    one that is no longer the head (a stale or cancelled run) and the saver
    does not allow forks. Nothing was stored.
    """
