"""The LMDB storage engine, one module per concern; :mod:`turnstore.server.engine` composes it."""
