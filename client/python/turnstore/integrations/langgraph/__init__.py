"""LangGraph's checkpointer on turnstore: :class:`TurnstoreSaver`.

Install with ``pip install turnstore[langgraph]``.

See docs/langgraph.md for what it stores where.
"""

from turnstore.integrations.langgraph.errors import CheckpointConflictError
from turnstore.integrations.langgraph.saver import TurnstoreSaver

__all__ = ["CheckpointConflictError", "TurnstoreSaver"]
