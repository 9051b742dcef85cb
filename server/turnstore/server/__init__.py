"""The turnstore daemon: the LMDB storage engine and the gRPC service over it.

Layers, each depending only on the ones below it:

- :mod:`turnstore.server.errors` and :mod:`turnstore.server.schema`: the
  engine's exceptions and its on-disk layout.
- :mod:`turnstore.server.engine`: the storage engine (LMDB, no gRPC).
- :mod:`turnstore.server.service`: the gRPC servicers and the one table that
  maps engine exceptions to status codes.
- :mod:`turnstore.server.app`: builds the gRPC server and runs it until a
  signal.
- :mod:`turnstore.server.options` and :mod:`turnstore.server.command`: the
  options of ``turnstore serve`` and the configuration built from them.

The server imports no client code but the generated ``turnstore.v1``.
"""
