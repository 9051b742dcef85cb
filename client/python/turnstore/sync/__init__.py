"""A synchronous façade over the async client: ``turnstore.sync.TurnstoreClient``.

For code that is not async: a plain script, a web framework's sync view,
LangGraph's sync checkpointer methods. The façade owns one event loop,
running on a thread of its own (named ``turnstore-sync``), and the async
:class:`turnstore.client.TurnstoreClient` made on it; each blocking method
runs the async call on that loop and waits for its result. It may be used
from any number of threads at once (their calls share the one channel and,
in the default write mode, the one append stream, as async tasks would).

``close()`` is its one closing verb (it is not async): it closes the async
client, stops the loop and joins its thread. A call made after ``close()``,
or while it runs, raises :class:`ClientClosedError` at once. A call made
from the façade's own loop thread (from code run through :meth:`call`)
raises RuntimeError instead of waiting for itself forever.
"""

from turnstore.sync.client import ClientClosedError, TurnstoreClient
from turnstore.sync.stores import SyncEventStore, SyncHistoryStore

__all__ = ["ClientClosedError", "SyncEventStore", "SyncHistoryStore", "TurnstoreClient"]
