"""What the daemon's connections may cost it: files, and memory left behind.

- :func:`raise_file_limit` raises the soft limit on open files to the hard
  one at start (systemd's default soft limit is 1,024).
- :class:`FilePlan` fits the listeners' connection caps under that limit,
  with room for the daemon's own files: a default cap is derived from the
  limit, an explicit one that does not fit is refused with a message that
  says what would.
- :class:`AcceptFailures` turns asyncio's traceback per failed ``accept()``
  (EMFILE, ENFILE, ENOBUFS, ENOMEM) into one log line per interval with a
  count.
- :class:`MemoryTrimmer` hands memory that gRPC freed back to the system
  (``malloc_trim``): without it a burst of large requests, half-sent ones
  above all, left the daemon's memory at its peak after they closed.

Nothing here imports gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import structlog

log = structlog.get_logger("turnstore")

# Files the daemon holds whatever its connections: LMDB's data and lock
# files, the directory lock, listening sockets, epoll and event file
# descriptors of gRPC and asyncio, the read pool's, logs, TLS files.
OWN_FILES: Final = 64
# A share of the limit kept free beyond every cap: a connection being
# closed still holds its file for a moment, and probes and backups open
# some.
HEADROOM_FRACTION: Final = 8
# The caps' defaults where the file limit allows them.
DEFAULT_GRPC_CONNECTIONS: Final = 1024
DEFAULT_HTTP_CONNECTIONS: Final = 512
# Where the hard limit is "unlimited", the soft one is raised to this.
UNLIMITED_FILES: Final = 1 << 20


def raise_file_limit() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard one; the (soft, hard) in force.

    A hard limit of RLIM_INFINITY raises the soft one to
    :data:`UNLIMITED_FILES` (the kernel refuses infinity for open files). A
    refusal leaves the soft limit as it was: the caps are fitted to
    whatever is in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_FILES if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, hard
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


@dataclass(frozen=True)
class FilePlan:
    """The connection caps of both listeners, fitted under the file limit.

    ``file_limit`` is the soft limit in force (after
    :func:`raise_file_limit`); ``database_connections`` the files a
    PostgreSQL pool holds (0 for LMDB); ``grpc_connections`` and
    ``http_connections`` the caps asked for (None: derived from the limit;
    ``http_connections`` is ignored when ``http`` is off).
    """

    file_limit: int
    grpc_connections: int
    http_connections: int
    reserved: int

    @classmethod
    def fit(
        cls,
        file_limit: int,
        *,
        grpc_connections: int | None,
        http_connections: int | None,
        http: bool,
        database_connections: int = 0,
    ) -> FilePlan:
        """The caps to use; raises ValueError when explicit caps do not fit the limit.

        The daemon's own files (:data:`OWN_FILES`), the database pool and a
        headroom of 1/:data:`HEADROOM_FRACTION` of the limit are kept free;
        what is left is the connections' share. A derived cap takes the
        default where it fits, else its part of the share (three quarters
        to gRPC when both listeners are on); an explicit cap is taken as
        given and must fit. Raises ValueError too when the limit leaves no
        room for a single connection.
        """
        reserved = OWN_FILES + database_connections + file_limit // HEADROOM_FRACTION
        share = file_limit - reserved
        if share < (2 if http else 1):
            raise ValueError(
                f"the open-file limit is {file_limit}: too low to serve (the daemon keeps "
                f"{reserved} files for itself and headroom); raise it (ulimit -n, "
                "systemd LimitNOFILE=)"
            )
        grpc_share = share * 3 // 4 if http else share
        grpc = grpc_connections
        if grpc is None:
            explicit_http = http_connections if http else 0
            room = share - explicit_http if explicit_http else grpc_share
            grpc = max(1, min(DEFAULT_GRPC_CONNECTIONS, room))
        web = 0
        if http:
            web = (
                http_connections
                if http_connections is not None
                else min(DEFAULT_HTTP_CONNECTIONS, share - grpc)
            )
            if web < 1:
                raise ValueError(
                    f"--max-connections {grpc} leaves no room for HTTP connections under the "
                    f"open-file limit of {file_limit} (at most {share} connections in all): "
                    "raise the limit (ulimit -n, systemd LimitNOFILE=) or lower it"
                )
        if grpc + web > share:
            caps = f"--max-connections {grpc}" + (
                f" and --http-max-connections {web}" if http else ""
            )
            raise ValueError(
                f"{caps} need {grpc + web + reserved} open files with the daemon's own and "
                f"headroom; the open-file limit is {file_limit}: raise it (ulimit -n, systemd "
                f"LimitNOFILE=) or lower the caps (at most {share} connections in all)"
            )
        return cls(file_limit, grpc, web, reserved)

    def fields(self) -> dict[str, int]:
        """What the daemon will hold, for the ``serving`` log line."""
        return {
            "file_limit": self.file_limit,
            "max_connections": self.grpc_connections,
            "http_max_connections": self.http_connections,
            "files_reserved": self.reserved,
        }


class EveryInterval:
    """Logs an event the first time and then at most once per ``interval`` seconds, with a count.

    For what can happen thousands of times a second under attack (a failed
    accept, a connection over the cap): one line per interval says how many
    times it happened since the last line.
    """

    def __init__(
        self, event: str, interval: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._event = event
        self._interval = interval
        self._clock = clock
        self._count = 0
        self._logged_at: float | None = None

    def note(self, **fields: Any) -> None:
        """Count one occurrence; log the count if the interval has passed."""
        self._count += 1
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < self._interval:
            return
        log.warning(self._event, count=self._count, interval_seconds=self._interval, **fields)
        self._count = 0
        self._logged_at = now


# asyncio's message for a failed accept() (selector_events.py).
_ACCEPT_FAILED: Final = "socket.accept() out of system resource"


class AcceptFailures:
    """An asyncio exception handler that counts failed ``accept()`` calls.

    asyncio logs each failed accept (the listener retries it a second
    later) with a traceback: at the file limit that was 1.2 MB of log a
    second. Here they are logged as ``accept_failed`` through
    :class:`EveryInterval`, with the last error; every other exception goes
    to the handler that was there before.
    """

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._failures = EveryInterval("accept_failed", interval, clock)
        self._previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Become ``loop``'s exception handler (passing on what is not an accept failure)."""
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _ACCEPT_FAILED:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        error = context.get("exception")
        self._failures.note(error=str(error) if error is not None else None)


class MemoryTrimmer:
    """Hands freed heap memory back to the system now and then (glibc's ``malloc_trim``).

    gRPC's buffers for large messages come from the C heap; freed, they
    stay in malloc's arenas, so a burst of large (or half-sent) requests
    kept the daemon at its peak: 1,711 MB after 32 half-sent 60 MB messages
    closed. Trimming every ``interval`` seconds on the thread pool brought it
    back to its size before (52 MB). Does nothing where the C library has
    no ``malloc_trim`` (musl, macOS).
    """

    def __init__(self, interval: float = 5.0) -> None:
        self._interval = interval
        self._trim: Callable[[int], int] | None = None
        name = ctypes.util.find_library("c")
        with contextlib.suppress(OSError, AttributeError):
            self._trim = ctypes.CDLL(name).malloc_trim if name else None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Trim from now on, on the running loop's default executor."""
        if self._trim is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        trim = self._trim
        assert trim is not None
        while True:
            await asyncio.sleep(self._interval)
            await loop.run_in_executor(None, trim, 0)

    def stop(self) -> None:
        """Stop trimming."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
