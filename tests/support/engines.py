"""Storage engines opened directly (no daemon), on either backend, for the engine suite.

:class:`EngineOpener` opens ``StorageEngine`` s of one backend on the test's
own store: LMDB on one data directory of the test's, PostgreSQL on one
fresh database of the session's server. Several engines opened by one
opener share that store (a reopen sees what the first wrote; on PostgreSQL
two open at once are two daemons of a fleet).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from turnstore.server.storage.config import EngineConfig, PostgresConfig
from turnstore.server.storage.interface import StorageEngine
from turnstore.server.storage.lmdb.engine import LmdbEngine
from turnstore.server.storage.postgres.engine import PostgresEngine

BACKENDS = ("lmdb", "postgres")


class EngineOpener:
    """``open_engine(**config)``: an engine of ``backend`` on the test's store.

    ``config`` are :class:`EngineConfig` fields (the data directory is the
    opener's). ``database`` gives the PostgreSQL DSN, asked for only when a
    PostgreSQL engine is opened. :meth:`close` closes every engine opened
    (closing is idempotent, so a test may close one itself).
    """

    def __init__(self, backend: str, data_dir: Path, database: Callable[[], str]) -> None:
        assert backend in BACKENDS, backend
        self.backend = backend
        self.data_dir = data_dir
        self._database = database
        self._dsn: str | None = None
        self.opened: list[StorageEngine] = []

    def __call__(self, **config: Any) -> StorageEngine:
        engine_config = EngineConfig(data_dir=self.data_dir, **config)
        engine: StorageEngine
        if self.backend == "lmdb":
            engine = LmdbEngine.open(engine_config)
        else:
            if self._dsn is None:
                self._dsn = self._database()
            engine = PostgresEngine.open(engine_config, PostgresConfig(self._dsn, pool_size=2))
        self.opened.append(engine)
        return engine

    def close(self) -> None:
        for engine in self.opened:
            engine.close()
