"""LangGraph's checkpointer on turnstore: :class:`TurnstoreSaver`.

Install with ``pip install 'turnstore[langgraph]'``. See docs/langgraph.md
for what it stores where.
"""

try:
    import langgraph.checkpoint.base  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "turnstore.integrations.langgraph needs LangGraph: pip install 'turnstore[langgraph]'"
    ) from error

from turnstore.integrations.langgraph.errors import CheckpointConflictError
from turnstore.integrations.langgraph.saver import TurnstoreSaver

__all__ = ["CheckpointConflictError", "TurnstoreSaver"]
