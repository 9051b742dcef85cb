"""Whether the database answered the last time this daemon asked.

Reads wait for a pooled connection for up to the connect timeout while the
database is believed reachable, so that a busy pool does not turn into
errors; once the writer, the listener or a read has seen it unreachable,
reads wait only :data:`DOWN_WAIT_SECONDS`, so that every call fails with
UNAVAILABLE well within a second until the database answers again.
"""

from __future__ import annotations

from typing import Final

DOWN_WAIT_SECONDS: Final = 0.25


class Reachability:
    """One flag, set from any thread (a plain attribute: a stale read costs only a wait)."""

    def __init__(self) -> None:
        self.down = False

    def mark_down(self) -> None:
        """The database did not answer (refused, dropped, timed out)."""
        self.down = True

    def mark_up(self) -> None:
        """The database answered."""
        self.down = False
