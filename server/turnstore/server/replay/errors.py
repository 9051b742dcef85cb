"""The error the replay layer raises itself (the engine never does)."""

from __future__ import annotations

from turnstore.server.storage.errors import DaemonError


class FollowerTooSlowError(DaemonError):
    """A follower was ended to keep the followers within their daemon-wide budget.

    It was the follower whose message had waited longest for the peer to read
    it. Nothing is lost: it resumes after the last position it received.
    """

    reason = "follower_too_slow"
