"""One LISTEN connection per daemon: commits of every daemon wake this one's followers.

NOTIFY is lossy: a notification sent while this connection is down is never
delivered. So the listener also wakes every follower on a periodic tick and
right after it (re)connects; followers re-read from their cursor, which makes
a lost notification cost latency, never an event.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from turnstore.server.storage.interface import CommitListener, WakeAll
from turnstore.server.storage.postgres.reachability import Reachability
from turnstore.server.storage.postgres.tables import CHANNEL


class CommitFeed:
    """The listening thread; see the module docstring."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection[Any]],
        listeners: list[CommitListener],
        tick_seconds: float,
        reachability: Reachability,
        own_session: Callable[[], int | None],
    ) -> None:
        self._connect = connect
        self._own_session = own_session
        self._reachability = reachability
        self._listeners = listeners
        self._tick = tick_seconds
        self.wake_all_listeners: list[WakeAll] = []
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        # Set once the first LISTEN is in place (tests and startup wait on it).
        self.listening = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="turnstore-pg-listen", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop listening; returns once the thread has ended (within a tick)."""
        self._stop.set()
        self._thread.join()

    def _wake_all(self) -> None:
        for wake in self.wake_all_listeners:
            with contextlib.suppress(Exception):
                wake()

    def _changed(self, payload: str) -> None:
        if payload == "*":
            self._wake_all()
            return
        try:
            changed = set(json.loads(payload))
        except ValueError:
            self._wake_all()
            return
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                listener(changed)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except psycopg.Error:
                self._reachability.mark_down()
                self._stop.wait(self._tick)
                continue
            try:
                with conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._reachability.mark_up()
                    self.listening.set()
                    self._wake_all()  # what was committed while we were not listening
                    tick_at = time.monotonic() + self._tick
                    while not self._stop.is_set():
                        left = max(tick_at - time.monotonic(), 0.0)
                        for notify in conn.notifies(timeout=left, stop_after=256):
                            # This daemon's own commits woke its followers already.
                            if notify.pid != self._own_session():
                                self._changed(notify.payload)
                        if time.monotonic() >= tick_at:
                            self._wake_all()
                            tick_at = time.monotonic() + self._tick
            except psycopg.Error:
                self._reachability.mark_down()
                self._stop.wait(self._tick)
