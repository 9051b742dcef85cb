"""Adapters of turnstore to the frameworks agents are built with.

Each lives in a module of its own and needs its framework, installed with
the matching extra (``turnstore[langgraph]`` for :mod:`turnstore.integrations.langgraph`);
neither the daemon nor the core client imports them.
"""
