"""Run the real ``turnstore serve`` in a subprocess, for end-to-end tests."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.support.postgres import PostgresServer, fresh_database, postgres_daemon_args

STARTUP_TIMEOUT = 60.0

# Every daemon process started and not yet reaped: the test fixtures kill what
# a failing test left running.
LIVE: set[subprocess.Popen[str]] = set()


class Daemon:
    """One ``turnstore serve`` process on a data directory.

    ``start`` returns once the daemon has logged that it is serving (the
    first log line), and fills ``addresses`` from that line. Every log line
    is kept in ``log_lines``; the process's stderr is drained continuously so
    the daemon never blocks on logging.
    """

    def __init__(
        self,
        data_dir: Path,
        listen: list[str] | None = None,
        extra_args: list[str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.data_dir = data_dir
        if listen is None:
            socket_dir = tempfile.mkdtemp(prefix="ts-sock-")
            listen = [f"unix:{socket_dir}/turnstore.sock"]
        self.listen = listen
        self.extra_args = extra_args or []
        self.cwd = cwd
        self.process: subprocess.Popen[str] | None = None
        self.log_lines: list[str] = []
        self.addresses: list[str] = []
        # The ``serving`` log line of the last start (its addresses, limits, ...).
        self.serving: dict[str, Any] = {}
        self._lines: queue.Queue[str | None] = queue.Queue()
        # Added to the process's environment at each start (LD_PRELOAD, for one).
        self.extra_env: dict[str, str] = {}

    @property
    def target(self) -> str:
        """The first bound address, as a client target."""
        return self.addresses[0]

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "turnstore", "serve", "--log-format", "json"]
        if self.data_dir is not None:
            args += ["--data-dir", str(self.data_dir)]
        for address in self.listen:
            args += ["--listen", address]
        return args + self.extra_args

    def start(self) -> dict[str, Any]:
        """Start and wait for the first log line; return it parsed.

        Raises RuntimeError with the log when the daemon exits or logs
        something other than ``serving`` first.
        """
        self._lines = queue.Queue()
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env},
        )
        LIVE.add(self.process)
        # Each process gets its own queue: a previous process's reader may
        # still be delivering its end-of-stream.
        threading.Thread(target=self._drain, args=(self.process, self._lines), daemon=True).start()
        first = self.next_log(STARTUP_TIMEOUT)
        if first is None or first.get("event") != "serving":
            self.process.wait(timeout=30)
            raise RuntimeError(f"daemon did not start: {self.log_lines}")
        self.addresses = list(first["listen"])
        self.serving = first
        return first

    def _drain(self, process: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.log_lines.append(line.rstrip("\n"))
            lines.put(line)
        lines.put(None)

    def next_log(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON log line, or None when the process closed stderr."""
        line = self._lines.get(timeout=timeout)
        if line is None:
            return None
        try:
            parsed: dict[str, Any] = json.loads(line)
        except ValueError:
            return {"event": "unparsed", "line": line}
        return parsed

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and wait for exit; return the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        status = self.process.wait(timeout=timeout)
        LIVE.discard(self.process)
        return status

    def kill(self) -> int:
        """SIGKILL the daemon (no shutdown at all) and reap it."""
        return self.stop(signal.SIGKILL)

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for the daemon to exit by itself."""
        assert self.process is not None
        status = self.process.wait(timeout=timeout)
        LIVE.discard(self.process)
        return status


class DaemonStarter:
    """The one way a test starts daemons of its own, on either backend.

    ``start_daemon(backend="lmdb", *extra_args, data_dir=..., listen=...)``
    (the ``start_daemon`` fixture is an instance) starts ``turnstore serve``
    and returns it serving. Each daemon gets a new data directory under
    ``root`` unless ``data_dir`` is given (to restart on the same data, or to
    look at its files), and, on PostgreSQL, a fresh database of the session's
    server unless ``dsn`` is given (a fleet: several daemons on one database
    from :meth:`database`). ``start=False`` returns it unstarted, for a test
    of a start that must fail.

    :meth:`close` (after the test) continues (SIGCONT) and stops every daemon
    still running, asserting that each exits with status 0, then drops the
    databases; a test that stops a daemon itself checks that status itself.

    ``shared=True`` is for a module- or session-scoped fixture: its daemons
    outlive the test that first asked for them, so the per-test reaper
    (``_reap_daemons`` in conftest.py) must leave them alone.
    """

    def __init__(
        self,
        root: Path,
        postgres_server: Callable[[], PostgresServer] | None = None,
        *,
        shared: bool = False,
    ) -> None:
        self._root = root
        self._postgres_server = postgres_server
        self._shared = shared
        self._databases = ExitStack()
        self.started: list[Daemon] = []

    def database(self) -> str:
        """The DSN of a fresh database, dropped at :meth:`close`."""
        assert self._postgres_server is not None, "this starter has no PostgreSQL server"
        return self._databases.enter_context(fresh_database(self._postgres_server()))

    def backend_args(self, backend: str, dsn: str | None = None) -> list[str]:
        """The options that put a daemon on ``backend``: none for LMDB."""
        if backend == "lmdb":
            assert dsn is None, "a DSN is for the postgres backend"
            return []
        assert backend == "postgres", backend
        return postgres_daemon_args(dsn if dsn is not None else self.database())

    def __call__(
        self,
        backend: str = "lmdb",
        *extra_args: str,
        data_dir: Path | None = None,
        listen: list[str] | None = None,
        dsn: str | None = None,
        cwd: Path | None = None,
        start: bool = True,
    ) -> Daemon:
        if data_dir is None:
            data_dir = self._root / f"daemon-{len(self.started)}"
        args = [*extra_args, *self.backend_args(backend, dsn)]
        daemon = Daemon(data_dir, listen=listen, extra_args=args, cwd=cwd)
        self.started.append(daemon)
        if start:
            daemon.start()
            if self._shared:
                assert daemon.process is not None
                LIVE.discard(daemon.process)
        return daemon

    def close(self) -> None:
        try:
            for daemon in self.started:
                if daemon.process is not None and daemon.process.poll() is None:
                    # A test may leave it paused (SIGSTOP); it must still stop cleanly.
                    daemon.process.send_signal(signal.SIGCONT)
                    assert daemon.stop() == 0, daemon.log_lines[-20:]
        finally:
            self._databases.close()
