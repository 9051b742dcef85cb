"""Shared parts of the hostile-input tests (``tests/test_hostile_*.py``).

Every RPC of a live ``turnstore serve`` gets hostile input generated with
hypothesis: :mod:`tests.support.hostile.wire` sends raw bytes and checks each status
against what the contract allows, :mod:`tests.support.hostile.checker` predicts each
outcome from the state read just before it, and :mod:`tests.support.hostile.strategies`
draws the requests. Each test module runs against a daemon of its own (the
``hostile`` fixture of ``tests/conftest.py``).
"""
