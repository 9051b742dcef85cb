"""Adapters of turnstore to the frameworks agents are built with.

Each lives in a module of its own and needs its framework, installed with the
matching extra; neither the daemon nor the core client imports them, and
importing this package needs no framework:

- :mod:`turnstore.integrations.langgraph` (``turnstore[langgraph]``): LangGraph's
  checkpoint saver, ``TurnstoreSaver``.
- :mod:`turnstore.integrations.openai_agents` (``turnstore[openai-agents]``): the
  OpenAI Agents SDK's ``Session``, ``TurnstoreSession``.
"""
