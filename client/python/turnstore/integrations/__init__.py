"""Adapters of turnstore to agent frameworks, each behind its own extra.

``turnstore.integrations.openai_agents`` (``turnstore[openai-agents]``): the
OpenAI Agents SDK's ``Session``. Importing this package needs no framework;
importing an adapter needs its framework installed.
"""
