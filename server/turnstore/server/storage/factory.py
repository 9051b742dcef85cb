"""Open the configured storage engine: the one module outside the engines that names them.

Everything above the storage layer knows a backend only as a
:class:`~turnstore.server.storage.interface.StorageEngine`; the layer test
(tests/test_layers.py) lets this module alone import an engine package.
"""

from __future__ import annotations

from turnstore.server.storage.config import EngineConfig, PostgresConfig
from turnstore.server.storage.interface import StorageEngine


def open_engine(config: EngineConfig, postgres: PostgresConfig | None = None) -> StorageEngine:
    """The PostgreSQL engine on ``postgres``'s database, else LMDB in ``config.data_dir``.

    Blocks (LMDB may migrate its schema, PostgreSQL connects): call it off
    the event loop. Raises what the engine's ``open`` raises:
    DataDirLockedError for a data directory another process holds,
    DatabaseUnavailableError for a database that cannot be reached, and
    ValueError for a newer schema or an unusable backup directory.
    """
    if postgres is None:
        from turnstore.server.storage.lmdb.engine import LmdbEngine

        return LmdbEngine.open(config)
    # Imported only here: psycopg is loaded only by daemons on PostgreSQL.
    from turnstore.server.storage.postgres.engine import PostgresEngine

    return PostgresEngine.open(config, postgres)
