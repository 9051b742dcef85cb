"""The TypeScript client (clients/typescript) against a real daemon, and its interop with Python.

The session installs the client's npm packages into clients/typescript/node_modules
when they are missing (with a throw-away npm cache), builds it with tsc, and runs its
node:test program against a daemon of its own. Python writes a thread and a
snapshot that the TypeScript program must read back exactly; the program writes a
thread and a snapshot that Python then reads back here.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import Daemon
from turnstore import AgentEventEnvelope, ConversationSnapshot, TurnstoreClient

TS_DIR = Path(__file__).resolve().parent.parent / "clients" / "typescript"
TEST_PROGRAM = "dist/test/client.test.js"
MIN_NODE_MAJOR = 20


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command in clients/typescript; fail the test with its output if it fails."""
    try:
        result = subprocess.run(
            args,
            cwd=TS_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{' '.join(args)} took over {timeout} s:\n{error.stdout!s}\n{error.stderr!s}")
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="session")
def node_env() -> Iterator[dict[str, str]]:
    """The environment for node and npm: npm's cache is a temporary directory."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            f"the TypeScript client's test needs Node.js {MIN_NODE_MAJOR}+ and npm on PATH "
            "(e.g. `apt-get install nodejs npm`)"
        )
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match.group(1)) < MIN_NODE_MAJOR:
        pytest.fail(f"the TypeScript client needs Node.js {MIN_NODE_MAJOR}+, found {version!r}")
    with tempfile.TemporaryDirectory(prefix="turnstore-npm-cache-") as cache:
        yield {**os.environ, "npm_config_cache": cache, "npm_config_update_notifier": "false"}


@pytest.fixture(scope="session")
def typescript_build(node_env: dict[str, str]) -> Path:
    """clients/typescript with its packages installed (`npm ci`, once) and built (`tsc`)."""
    installed = TS_DIR / "node_modules" / ".package-lock.json"
    lock = TS_DIR / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        _run(["npm", "ci", "--no-audit", "--no-fund"], node_env, timeout=180)
    _run(["npm", "run", "build"], node_env, timeout=120)
    return TS_DIR / TEST_PROGRAM


def _flat_turns(turns: list[tuple[int, bool, list[AgentEventEnvelope]]]) -> list[dict[str, Any]]:
    """Turns in the interop form: flat JSON envelopes."""
    return [
        {"turn": turn, "finished": finished, "events": [e.to_json_dict() for e in events]}
        for turn, finished, events in turns
    ]


def _python_turns() -> list[tuple[int, bool, list[AgentEventEnvelope]]]:
    """What Python writes for TypeScript to read: turn 1 finished, turn 3 open."""
    return [
        (
            1,
            True,
            [
                AgentEventEnvelope.new(
                    {"type": "text_delta", "message_id": "m1", "delta": "Hé"}, 0
                ),
                AgentEventEnvelope.new(
                    {"type": "text_delta", "message_id": "m1", "delta": "llo 😀"}, 2**40
                ),
                AgentEventEnvelope.new(
                    {
                        "type": "tool_call_start",
                        "name": "search",
                        "args": {"q": "x\ny", "n": [1, 2.5, None, True, {}]},
                    },
                    2,
                ),
            ],
        ),
        (3, False, [AgentEventEnvelope.new({"type": "turn_complete"}, 0)]),
    ]


def _typescript_turns() -> list[dict[str, Any]]:
    """What the TypeScript program writes for Python to read: turn 2 finished, turn 5 open."""
    return _flat_turns(
        [
            (
                2,
                True,
                [
                    AgentEventEnvelope.new({"type": "text_delta", "delta": f"ts-{i} ✓"}, i)
                    for i in range(4)
                ],
            ),
            (5, False, [AgentEventEnvelope.new({"type": "error", "detail": {"code": 7}}, 9)]),
        ]
    )


async def _write_python_side(target: str, interop: dict[str, Any]) -> None:
    async with TurnstoreClient(target) as client:
        await client.wait_ready()
        for turn in interop["python_turns"]:
            events = [AgentEventEnvelope.from_json_dict(e) for e in turn["events"]]
            await client.events.append_many(interop["python_thread"], turn["turn"], events)
            if turn["finished"]:
                await client.events.finish_turn(interop["python_thread"], turn["turn"])
        snapshot = ConversationSnapshot.from_json_dict(interop["python_snapshot"])
        await client.history(interop["python_snapshot_key"]).save(snapshot)


async def _read_typescript_side(
    target: str, interop: dict[str, Any]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    async with TurnstoreClient(target) as client:
        turns = await client.events.get_turns(interop["ts_thread"])
        snapshot = await client.history(interop["ts_snapshot_key"]).load()
    flat = _flat_turns([(t.turn, t.finished, t.events) for t in turns])
    return flat, None if snapshot is None else snapshot.to_json_dict()


@pytest.mark.timeout(300)
def test_typescript_client_against_daemon(
    typescript_build: Path, node_env: dict[str, str], tmp_path: Path
) -> None:
    interop: dict[str, Any] = {
        "python_thread": f"py-{uuid.uuid4()}",
        "python_turns": _flat_turns(_python_turns()),
        "python_snapshot_key": f"py-conversation-{uuid.uuid4()}",
        "python_snapshot": {
            "version": 1,
            "messages": [{"role": "user", "content": "héllo"}, {"role": "tool", "n": [1, 2]}],
            "pinned": [False, True],
        },
        "ts_thread": f"ts-{uuid.uuid4()}",
        "ts_turns": _typescript_turns(),
        "ts_snapshot_key": f"ts-conversation-{uuid.uuid4()}",
        "ts_snapshot": {
            "version": 1,
            "messages": ["from ts ✓", {"a": None}],
            "pinned": [True, False],
        },
    }
    daemon = Daemon(tmp_path / "data")
    daemon.start()
    try:
        asyncio.run(_write_python_side(daemon.target, interop))
        env = {
            **node_env,
            "TURNSTORE_TARGET": daemon.target,
            "TURNSTORE_INTEROP": json.dumps(interop),
        }
        result = _run(
            ["node", "--test", "--test-reporter=tap", str(typescript_build)], env, timeout=120
        )
        counts = dict(
            re.findall(r"^# (pass|fail|skipped|cancelled|todo) (\d+)$", result.stdout, re.M)
        )
        assert counts.get("pass", "0") != "0", result.stdout
        # The interop tests are skipped without TURNSTORE_INTEROP: make sure they ran.
        assert re.search(r"^\s*ok \d+ - reads what Python wrote$", result.stdout, re.M), (
            result.stdout
        )
        assert [counts.get(key) for key in ("fail", "skipped", "cancelled")] == ["0", "0", "0"], (
            result.stdout
        )
        turns, snapshot = asyncio.run(_read_typescript_side(daemon.target, interop))
    finally:
        status = daemon.stop()
    assert status == 0, daemon.log_lines
    assert turns == interop["ts_turns"]
    assert snapshot == interop["ts_snapshot"]
