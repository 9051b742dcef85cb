"""turnstore.integrations.langgraph.TurnstoreSaver against real daemons.

LangGraph's official conformance suite (``langgraph-checkpoint-conformance``
from PyPI) runs against the saver on LMDB and once on PostgreSQL and must pass
every capability, base and extended; a real ``StateGraph`` with an interrupt
and a resume ends as it does with LangGraph's ``InMemorySaver``; two writers
continuing one thread cannot both succeed. The test installs LangGraph when
it is missing and fails (never skips) when it cannot.
"""

from __future__ import annotations

import asyncio
import importlib
import operator
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncGenerator
from typing import Annotated, Any, TypedDict

import pytest

from tests.daemon import Daemon

REQUIREMENTS = [
    "langgraph>=1.2",
    "langgraph-checkpoint>=4.3",
    "langgraph-checkpoint-conformance>=0.0.2",
]


def _require_langgraph() -> None:
    """Install LangGraph and its conformance suite when missing; fail when that fails."""
    try:
        importlib.import_module("langgraph.graph")
        importlib.import_module("langgraph.checkpoint.conformance")
        return
    except ImportError:
        pass
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", *REQUIREMENTS],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"could not install {REQUIREMENTS}: {result.stderr[-2000:]}"
    importlib.invalidate_caches()


_require_langgraph()

from langgraph.checkpoint.base import BaseCheckpointSaver  # noqa: E402
from langgraph.checkpoint.conformance import checkpointer_test, validate  # noqa: E402
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.graph import END, START, StateGraph  # noqa: E402
from langgraph.types import Command, interrupt  # noqa: E402

from turnstore.integrations.langgraph import CheckpointConflictError, TurnstoreSaver  # noqa: E402
from turnstore.sync import TurnstoreClient  # noqa: E402


async def _conformance(target: str, name: str) -> None:
    @checkpointer_test(name=name)
    async def factory() -> AsyncGenerator[BaseCheckpointSaver[Any], None]:
        async with TurnstoreSaver.from_target(target) as saver:
            yield saver

    report = await validate(factory)
    summary = {
        capability: (result.detected, result.passed, result.tests_passed, result.tests_failed)
        for capability, result in report.results.items()
    }
    print(f"conformance of {name}: {summary}")
    assert set(report.results) == {c.value for c in ALL_CAPABILITIES}
    failures = {
        capability: result.failures
        for capability, result in report.results.items()
        if not (result.detected and result.passed and result.tests_failed == 0)
    }
    assert failures == {}, failures
    assert all(result.tests_passed > 0 for result in report.results.values())


async def test_conformance_lmdb(daemon: Daemon) -> None:
    await _conformance(daemon.target, "TurnstoreSaver-lmdb")


async def test_conformance_postgres(postgres_daemon: Daemon) -> None:
    await _conformance(postgres_daemon.target, "TurnstoreSaver-postgres")
