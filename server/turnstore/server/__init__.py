"""The turnstore daemon. Its folders are its layers, lowest first:

- :mod:`~turnstore.server.storage`: the one storage-engine interface
  (``storage.interface``), its values, errors, input checks and record
  framing; the engines :mod:`~turnstore.server.storage.lmdb` (embedded) and
  :mod:`~turnstore.server.storage.postgres` (a fleet). No gRPC here.
- :mod:`~turnstore.server.replay`: the replay loop, live followers, and the
  hand-off of results from an engine's writer thread to the event loop.
- :mod:`~turnstore.server.access`: scopes, the scoped view of an engine,
  browser sessions and their revocation.
- :mod:`~turnstore.server.api`: the edges: ``api.grpc`` (servicers,
  interceptors, ingress limits) and ``api.http`` (routes, SSE, the
  inspector's files), which never import each other.
- :mod:`~turnstore.server.daemon`: ``turnstore serve``: options, the command,
  the app that wires the layers together, ports and logs.

Each layer imports only itself and the layers before it
(``tests/test_layers.py`` pins this). The server imports no client code but
the generated ``turnstore.v1``.
"""
