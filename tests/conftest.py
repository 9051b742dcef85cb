"""Shared fixtures: a real daemon per test session, and the stores under test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.support import daemon as daemon_module
from tests.support.daemon import Daemon, DaemonStarter
from tests.support.postgres import (
    PostgresServer,
    fresh_database,
    postgres_daemon_args,
    start_postgres,
)
from turnstore import EventStore, HistoryStore, TurnstoreClient
from turnstore.events import WriteMode
from turnstore.testing import InMemoryEventStore, InMemoryHistoryStore

# `make test` runs the suite in pytest-xdist workers (`-n 2 --dist loadgroup`),
# a test file at a time, as `--dist loadfile` would: each file is a group. The
# files that install and build client/typescript (npm ci, tsc, npm pack) share
# one group, so that one worker builds it while no node process of another
# worker runs from its dist/. Installs outside the checkout (apt, pip) take a
# machine-wide lock instead (tests/support/exclusive.py).
TYPESCRIPT_CLIENT_FILES = frozenset(
    {
        "test_cross_language",
        "test_deadlines",
        "test_json_depth",
        "test_readme",
        "test_rust",
        "test_ts_package",
        "test_ts_resumable",
        "test_typescript",
    }
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give each test its file's group (before xdist reads the groups)."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            stem = item.path.stem
            group = "typescript-client" if stem in TYPESCRIPT_CLIENT_FILES else stem
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(autouse=True)
def _reap_daemons() -> Iterator[None]:
    """Kill the daemons a test started and left running (a failed assertion)."""
    before = set(daemon_module.LIVE)
    yield
    for process in daemon_module.LIVE - before:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=60)
        daemon_module.LIVE.discard(process)


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One ``turnstore serve`` subprocess shared by the session's tests."""
    # Often first needed inside a test's fixture: shared, not one for _reap_daemons to kill.
    starter = DaemonStarter(tmp_path_factory.mktemp("shared-daemon"), shared=True)
    yield starter()
    starter.close()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon of its own for each tests/test_hostile_*.py module's barrage.

    A module of its own, so that what one barrage leaves behind (bodies that
    are not JSON, finished turns) never shapes another's; the daemon must
    still stop cleanly after it.
    """
    starter = DaemonStarter(tmp_path_factory.mktemp("hostile"), shared=True)
    yield starter()
    starter.close()


@pytest.fixture
async def client(daemon: Daemon) -> AsyncIterator[TurnstoreClient]:
    """A client of the shared daemon."""
    async with TurnstoreClient(daemon.target) as connected:
        yield connected


@pytest.fixture
def thread_id() -> str:
    """A thread id no other test uses."""
    return f"thread-{uuid.uuid4()}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the session's tests of the PostgreSQL backend."""
    server = start_postgres()
    yield server
    server.remove()


@pytest.fixture(scope="session")
def postgres_daemon(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daemon]:
    """One ``turnstore serve --backend postgres`` shared by the session's tests."""
    # Often first needed inside a test's fixture: shared, not one for _reap_daemons to kill.
    starter = DaemonStarter(
        tmp_path_factory.mktemp("pg-daemon"), lambda: postgres_server, shared=True
    )
    yield starter("postgres", dsn=postgres_server.dsn)
    starter.close()


@pytest.fixture(params=["memory", "daemon-stream", "daemon-unary", "postgres"])
async def event_store(request: pytest.FixtureRequest) -> AsyncIterator[EventStore]:
    """Each EventStore implementation in turn: in memory, the daemon in both write modes,
    and a daemon on PostgreSQL."""
    if request.param == "memory":
        yield InMemoryEventStore()
        return
    daemon: Daemon = request.getfixturevalue(
        "postgres_daemon" if request.param == "postgres" else "daemon"
    )
    mode: WriteMode = "unary" if request.param == "daemon-unary" else "stream"
    async with TurnstoreClient(daemon.target, write_mode=mode) as connected:
        assert connected.events.write_mode == mode
        yield connected.events


@pytest.fixture(params=["memory", "daemon", "postgres"])
async def history_factory(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[[str], HistoryStore]]:
    """A factory of HistoryStores bound to a key, for each implementation."""
    if request.param == "memory":
        stores: dict[str, InMemoryHistoryStore] = {}
        yield lambda key: stores.setdefault(key, InMemoryHistoryStore())
        return
    daemon: Daemon = request.getfixturevalue(
        "postgres_daemon" if request.param == "postgres" else "daemon"
    )
    async with TurnstoreClient(daemon.target) as connected:
        yield connected.history


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh data directory."""
    return tmp_path / "data"


@pytest.fixture(params=["lmdb", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn, for a test that starts daemons of its own (``start_daemon``)."""
    name: str = request.param
    return name


@pytest.fixture
def backend_args(backend: str, request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Each backend in turn, for a test that starts a daemon of its own: the options to add.

    LMDB: none (the daemon's data directory is the test's). PostgreSQL: a
    fresh database of the session's server, dropped after the test.
    """
    if backend == "lmdb":
        yield []
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    with fresh_database(server) as dsn:
        yield postgres_daemon_args(dsn)


@pytest.fixture
def start_daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DaemonStarter]:
    """Start daemons of the test's own: ``start_daemon("lmdb" | "postgres", *extra_args)``.

    See :class:`~tests.support.daemon.DaemonStarter`: each is on a new data
    directory under ``tmp_path`` (LMDB) or a new database of the session's
    PostgreSQL server (started only when asked for). After the test each
    must stop with status 0; the databases are dropped after their daemons
    stopped.
    """
    starter = DaemonStarter(tmp_path, lambda: request.getfixturevalue("postgres_server"))
    yield starter
    starter.close()
