"""A real PostgreSQL server for the tests of the PostgreSQL backend.

:func:`start_postgres` installs Debian's ``postgresql`` when ``initdb`` is
missing, ``initdb``s a cluster in a temporary directory as the unprivileged
user ``nobody`` (PostgreSQL refuses to run as root), starts it with
``pg_ctl`` on a free 127.0.0.1 port with a password (scram-sha-256), and
:meth:`PostgresServer.stop` stops it and removes the directory. A server
that cannot start raises: the tests that need it fail, never skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.support.exclusive import one_at_a_time

PASSWORD = f"pw-{uuid.uuid4().hex}"
USER = "turnstore"


def _bin_dir() -> Path:
    """The directory of ``initdb`` and ``pg_ctl``, installing the package if needed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        with one_at_a_time("apt"):
            found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
            if not found:
                message = "initdb is missing: installing Debian's postgresql"
                print(message, file=sys.stderr, flush=True)
                subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=300)
                subprocess.run(
                    ["apt-get", "install", "-y", "postgresql"],
                    check=True,
                    capture_output=True,
                    timeout=600,
                    env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                )
                found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("initdb is missing even after installing postgresql")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    """A running cluster: its DSN (with the password) and how to stop it."""

    root: Path
    bin_dir: Path
    port: int

    @property
    def dsn(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int:
        """The postmaster's process id (each connection's backend is its child)."""
        return int((self.root / "data" / "postmaster.pid").read_text().split()[0])

    def version(self) -> str:
        """``PostgreSQL 15.x`` (what ``postgres --version`` says)."""
        done = subprocess.run(
            [str(self.bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        # "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"
        words = done.stdout.split()
        return f"PostgreSQL {words[2]}" if len(words) > 2 else "PostgreSQL (unknown version)"

    def _as_owner(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", "nobody", "--", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.root,
        )

    def start(self) -> None:
        data = self.root / "data"
        done = self._as_owner(
            str(self.bin_dir / "pg_ctl"), "start", "-w", "-t", "30", "-D", str(data),
            "-l", str(self.root / "server.log"),
            "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}",
        )  # fmt: skip
        if done.returncode != 0:
            log = (
                (self.root / "server.log").read_text()
                if (self.root / "server.log").exists()
                else ""
            )
            raise RuntimeError(f"PostgreSQL did not start: {done.stdout}{done.stderr}{log}")

    def stop(self, mode: str = "fast") -> None:
        self._as_owner(
            str(self.bin_dir / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.root / "data")
        )

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """Create and start a cluster; RuntimeError when it cannot start."""
    bin_dir = _bin_dir()
    nobody = pwd.getpwnam("nobody")
    root = Path(tempfile.mkdtemp(prefix="ts-pg-"))
    os.chown(root, nobody.pw_uid, nobody.pw_gid)
    password_file = root / "password"
    password_file.write_text(PASSWORD + "\n")
    os.chown(password_file, nobody.pw_uid, nobody.pw_gid)
    server = PostgresServer(root, bin_dir, _free_port())
    done = server._as_owner(
        str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", USER,
        "--auth=scram-sha-256", f"--pwfile={password_file}", "-E", "UTF8", "--locale=C",
    )  # fmt: skip
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
    try:
        server.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


def postgres_daemon_args(database: PostgresServer | str) -> list[str]:
    """The options that put a daemon on ``database`` (a server's default database, or a DSN).

    The one place the tests spell them: every PostgreSQL daemon of the tests
    is started with these.
    """
    dsn = database.dsn if isinstance(database, PostgresServer) else database
    return ["--backend", "postgres", "--postgres-dsn", dsn]


@contextmanager
def fresh_database(server: PostgresServer) -> Iterator[str]:
    """A new, empty database on ``server`` for the block: its DSN; dropped afterwards.

    For a daemon whose counts or listings must not see other tests' threads.
    Dropped ``WITH (FORCE)``, so a daemon the block left running cannot keep it.
    """
    name = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield server.dsn.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
