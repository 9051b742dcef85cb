"""The servers under test: the turnstore daemon (on LMDB or PostgreSQL) and a Redis server.

All run as their own processes, listening only on this machine: the
daemon on a Unix socket, Redis on 127.0.0.1 at a free port. All start on
temporary directories and are stopped by their ``stop`` methods, which the
orchestrator always calls. PostgreSQL itself is ``tests/support/postgres.py``'s
``start_postgres`` (a fresh cluster as ``nobody`` on a free 127.0.0.1 port).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from tests.support.daemon import Daemon

REDIS_START_TIMEOUT: Final = 30.0


def start_daemon(work_dir: Path, *extra_args: str) -> Daemon:
    """Start ``turnstore serve`` on ``work_dir/data``, listening on ``work_dir/s.sock``.

    ``extra_args`` are further ``serve`` options. Returns once the daemon
    logged ``serving`` (tests/support/daemon.py waits for it).
    """
    daemon = Daemon(
        work_dir / "data", listen=[f"unix:{work_dir}/s.sock"], extra_args=list(extra_args)
    )
    daemon.start()
    return daemon


def start_postgres_daemon(work_dir: Path, dsn: str) -> Daemon:
    """Start ``turnstore serve --backend postgres`` on the database ``dsn``, on ``work_dir/s.sock``.

    The DSN (with its password) goes in a file only root can read
    (``--postgres-dsn-file``), not on the command line. Several daemons may
    serve one database; each needs its own ``work_dir``.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    dsn_file = work_dir / "dsn"
    dsn_file.touch(mode=0o600)
    dsn_file.write_text(dsn + "\n")
    daemon = Daemon(
        work_dir / "unused-data",
        listen=[f"unix:{work_dir}/s.sock"],
        extra_args=["--backend", "postgres", "--postgres-dsn-file", str(dsn_file)],
    )
    daemon.start()
    return daemon


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def ensure_redis_installed() -> str:
    """The path of ``redis-server``, installing Debian's package if it is missing.

    Runs ``apt-get update`` and ``apt-get install -y redis-server`` only when
    ``redis-server`` is not on PATH, and says so on stderr. Raises
    RuntimeError when that fails.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    print("redis-server is not on PATH: installing Debian's redis-server", file=sys.stderr)
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "redis-server"]):
        print(f"  $ {' '.join(command)}", file=sys.stderr, flush=True)
        completed = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            check=False,
        )
        tail = completed.stdout.strip().splitlines()[-3:]
        for line in tail:
            print(f"    {line}", file=sys.stderr)
        if completed.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed with status {completed.returncode}")
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("redis-server is still not on PATH after installing it")
    return found


class RedisServer:
    """One ``redis-server`` on 127.0.0.1, durable like turnstore.

    ``--appendonly yes --appendfsync always``: every write is in the
    append-only file and fsynced before Redis replies (writes that arrive
    together share an fsync); ``--save ''`` turns RDB snapshots off. Data
    lives in ``work_dir``.
    """

    def __init__(self, executable: str, work_dir: Path) -> None:
        self.executable = executable
        self.work_dir = work_dir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.version = ""

    def command(self) -> list[str]:
        """The command line."""
        return [
            self.executable,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--dir", str(self.work_dir),
            "--logfile", str(self.work_dir / "redis.log"),
        ]  # fmt: skip

    def start(self) -> None:
        """Start it and wait until it answers PING; raise RuntimeError if it does not."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        banner = subprocess.run(
            [self.executable, "--version"], capture_output=True, text=True, check=False
        ).stdout.split()
        # "Redis server v=7.0.15 sha=... malloc=..."
        versions = [word.removeprefix("v=") for word in banner if word.startswith("v=")]
        self.version = f"Redis {versions[0]}" if versions else "Redis (unknown version)"
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with status {self.process.returncode}")
            if self._ping():
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING in time")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        """Terminate it (SIGTERM, then SIGKILL after 30 s) and reap it. Idempotent."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
