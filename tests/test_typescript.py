"""The TypeScript client (client/typescript) against a real daemon, and its interop with Python.

The session installs the client's npm packages into client/typescript/node_modules
when they are missing (with a throw-away npm cache), builds it with tsc, and runs its
node:test program against a daemon of its own, once per write mode (appends over the
shared AppendStream, and unary calls). Python writes a thread and a snapshot that the
TypeScript program must read back exactly; the program writes a thread and a snapshot
that Python then reads back here. Two driver programs, run and driven line by line
from here, cover the shared stream under a daemon that goes away:
test/restart-driver.ts appends from many callers while the daemon is restarted
under it, test/deadline-driver.ts lets one write run out its deadline while the
daemon is frozen, and test/retry-driver.ts makes every kind of call while the
daemon is stopped, until it is started again. test/secure-driver.ts runs the
same calls against daemons that require a bearer token, TLS or mutual TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.commands import run_or_fail
from tests.support.daemon import DaemonStarter
from turnstore import (
    AgentEventEnvelope,
    ConversationSnapshot,
    StoredEvent,
    TurnFinished,
    TurnstoreClient,
)
from turnstore.server.api.errors import STATUS_BY_REASON

TS_DIR = Path(__file__).resolve().parent.parent / "client" / "typescript"
TEST_PROGRAM = "dist/test/client.test.js"
RESTART_DRIVER = "dist/test/restart-driver.js"
DEADLINE_DRIVER = "dist/test/deadline-driver.js"
SECURE_DRIVER = "dist/test/secure-driver.js"
RETRY_DRIVER = "dist/test/retry-driver.js"
MIN_NODE_MAJOR = 20


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command in client/typescript; fail the test with its output if it fails."""
    return run_or_fail(args, cwd=TS_DIR, timeout=timeout, env=env)


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
    """client/typescript with its packages installed (`npm ci`, once) and built (`tsc`)."""
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
@pytest.mark.parametrize("write_mode", ["stream", "unary"])
def test_typescript_client_against_daemon(
    typescript_build: Path,
    node_env: dict[str, str],
    tmp_path: Path,
    write_mode: str,
    start_daemon: DaemonStarter,
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
    daemon = start_daemon(data_dir=tmp_path / "data")
    try:
        asyncio.run(_write_python_side(daemon.target, interop))
        env = {
            **node_env,
            "TURNSTORE_TARGET": daemon.target,
            "TURNSTORE_INTEROP": json.dumps(interop),
            "TURNSTORE_WRITE_MODE": write_mode,
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
        assert re.search(
            rf"^\s*ok \d+ - the client writes in {write_mode} mode$", result.stdout, re.M
        ), result.stdout
        assert [counts.get(key) for key in ("fail", "skipped", "cancelled")] == ["0", "0", "0"], (
            result.stdout
        )
        turns, snapshot = asyncio.run(_read_typescript_side(daemon.target, interop))
    finally:
        status = daemon.stop()
    assert status == 0, daemon.log_lines
    assert turns == interop["ts_turns"]
    assert snapshot == interop["ts_snapshot"]


class _Driver:
    """A driver program's process: JSON lines from its stdout, lines to its stdin."""

    def __init__(self, program: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            ["node", str(program)],
            cwd=TS_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def expect(self, phase: str, timeout: float) -> dict[str, Any]:
        """The next message; fails the test unless it is ``phase`` within ``timeout`` s."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the driver said nothing for {timeout} s (waiting for {phase!r})")
        if line is None:
            self.process.wait(timeout=10)
            assert self.process.stderr is not None
            pytest.fail(
                f"the driver exited ({self.process.returncode}): {self.process.stderr.read()}"
            )
        message: dict[str, Any] = json.loads(line)
        assert message.get("phase") == phase, message
        return message

    def send(self, line: str) -> None:
        """Write a line; if the driver has exited, the next :meth:`expect` says why."""
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()

    def finish(self) -> int:
        """Close its stdin and reap it (killing it if it hangs)."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)


async def _stored(target: str, thread: str) -> tuple[list[tuple[str, int]], dict[int, int]]:
    """Every stored event of ``thread`` as (event id, position), and each finished turn's count."""
    events: list[tuple[str, int]] = []
    finished: dict[int, int] = {}
    async with TurnstoreClient(target) as client:
        await client.wait_ready()
        async for item in client.events.replay(thread):
            if isinstance(item, StoredEvent):
                events.append((item.envelope.event_id, item.position))
            elif isinstance(item, TurnFinished):
                finished[item.turn] = item.event_count
    return events, finished


@pytest.mark.timeout(180)
@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_typescript_appends_survive_a_daemon_restart(
    typescript_build: Path,
    node_env: dict[str, str],
    tmp_path: Path,
    stop_signal: int,
    start_daemon: DaemonStarter,
) -> None:
    """Callers of one TS client keep appending while the daemon is killed (or
    stopped) and started again on the same data directory and socket: the
    shared stream is reopened, what it had not acknowledged is resent, and
    every acknowledged event is stored exactly once, where its call said."""
    thread = f"ts-restart-{uuid.uuid4()}"
    daemon = start_daemon(data_dir=tmp_path / "data")
    driver = _Driver(
        typescript_build.parent / Path(RESTART_DRIVER).name,
        {**node_env, "TURNSTORE_TARGET": daemon.target, "TURNSTORE_THREAD": thread},
    )
    try:
        driver.expect("ready", timeout=60)
        status = daemon.stop(stop_signal)
        assert status == (-signal.SIGKILL if stop_signal == signal.SIGKILL else 0), status
        daemon.start()  # the same data directory and socket
        driver.send("restarted")
        done = driver.expect("done", timeout=90)
        assert driver.finish() == 0
        events, finished = asyncio.run(_stored(daemon.target, thread))
    finally:
        driver.finish()
        daemon.stop()
    acked: dict[str, int] = done["acked"]
    assert done["streams"] >= 2, "the stream was not reopened"
    assert done["inFlightAtRestart"] > 0, done
    duplicates = [event_id for event_id, n in Counter(i for i, _ in events).items() if n > 1]
    assert duplicates == []
    # Every call succeeded, so everything sent was acknowledged: stored == acked, exactly.
    assert dict(events) == acked
    assert sorted(acked.values()) == list(range(len(acked)))
    counts = {int(turn): count for turn, count in done["counts"].items()}
    assert finished == counts
    assert sum(counts.values()) == len(acked)
    assert len(counts) > 8, "the callers went on to later turns"


@pytest.mark.timeout(120)
def test_typescript_write_past_its_deadline_fails_alone(
    typescript_build: Path, node_env: dict[str, str], tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    """With the daemon frozen, one write over the shared stream runs out its
    deadline (DeadlineExceededError); writes sent after it on the same stream
    succeed once the daemon is thawed, and the late write is still stored."""
    thread = f"ts-deadline-{uuid.uuid4()}"
    daemon = start_daemon(data_dir=tmp_path / "data")
    assert daemon.process is not None
    pid = daemon.process.pid
    driver = _Driver(
        TS_DIR / DEADLINE_DRIVER,
        {**node_env, "TURNSTORE_TARGET": daemon.target, "TURNSTORE_THREAD": thread},
    )
    try:
        driver.expect("ready", timeout=60)
        os.kill(pid, signal.SIGSTOP)
        try:
            driver.send("frozen")
            expired = driver.expect("expired", timeout=30)
        finally:
            os.kill(pid, signal.SIGCONT)
        done = driver.expect("done", timeout=30)
        assert driver.finish() == 0
        events, finished = asyncio.run(_stored(daemon.target, thread))
    finally:
        os.kill(pid, signal.SIGCONT)
        driver.finish()
        daemon.stop()
    assert expired["lateError"] == "DeadlineExceededError", expired
    assert expired["waitedMs"] >= 1_400, expired  # the client's timeoutMs, not earlier
    assert done["streams"] == 1, "the expired write did not tear the stream down"
    assert done["afterPositions"] == [2]
    # The late write was sent before its deadline passed, so it was committed.
    ids = [event_id for event_id, _ in events]
    assert ids[1:] == [done["lateId"], done["afterId"]]
    assert [position for _, position in events] == [0, 1, 2]
    assert finished == {2: 0}


def test_typescript_client_knows_every_reason_the_daemon_sends(
    typescript_build: Path, node_env: dict[str, str]
) -> None:
    """Each reason of the daemon's status table (server/turnstore/server/api/errors.py,
    which tests/test_error_vocabulary.py holds to the daemon's error classes)
    is in the TypeScript client's map (none left to the status code), and the
    map holds no reason the daemon never sends."""
    daemon_reasons = set(STATUS_BY_REASON)
    script = "console.log(JSON.stringify(require('./dist/src/errors').KNOWN_REASONS))"
    result = _run(["node", "-e", script], node_env, timeout=60)
    assert sorted(json.loads(result.stdout)) == sorted(daemon_reasons)


def _secure_runs(
    node_env: dict[str, str], cases: list[dict[str, Any]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Run test/secure-driver.ts on ``cases``; each case's outcome of each call."""
    env = {**node_env, "TURNSTORE_CASES": json.dumps(cases)}
    result = _run(["node", SECURE_DRIVER], env, timeout=120)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    return {line["case"]: line["results"] for line in lines}


#: What every call of test/secure-driver.ts gives on a fresh thread and key when it is let in.
SECURE_OK = {
    "streamAppend": {"ok": [0]},
    "unaryAppend": {"ok": [1]},
    "finish": {"ok": "finished"},
    "listTurns": {"ok": [[1, True, 2]]},
    "replay": {"ok": ["event", "event", "turn_finished", "caught_up"]},
    "save": {"ok": 1},
    "load": {"ok": ["over a secured channel"]},
    "stats": {"ok": "number"},
}


def _error_classes(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {call: outcome.get("error", outcome) for call, outcome in results.items()}


@pytest.mark.timeout(180)
def test_typescript_bearer_token(
    typescript_build: Path, node_env: dict[str, str], tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    """Against a daemon run with --auth-token-file, every call (unary, the
    shared append stream, ListTurns, Replay) without the token or with a
    wrong one fails with UnauthenticatedError, never retried; with it,
    every call works."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    daemon = start_daemon("lmdb", "--auth-token-file", str(token_file), data_dir=tmp_path / "data")
    try:
        runs = _secure_runs(
            node_env,
            [
                {"name": "none", "target": daemon.target},
                {"name": "wrong", "target": daemon.target, "token": "wrong-token"},
                {"name": "right", "target": daemon.target, "token": "s3cret-token"},
            ],
        )
    finally:
        status = daemon.stop()
    assert status == 0, daemon.log_lines
    for name in ("none", "wrong"):
        refused = runs[name]
        assert set(_error_classes(refused).values()) == {"UnauthenticatedError"}, refused
        assert {(o["code"], o["reason"]) for o in refused.values()} == {(16, "unauthenticated")}
        assert all("bearer token" in o["message"] for o in refused.values()), refused
    assert runs["right"] == SECURE_OK


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.mark.timeout(180)
def test_typescript_tls_and_mutual_tls(
    typescript_build: Path,
    node_env: dict[str, str],
    tmp_path: Path,
    ca: trustme.CA,
    start_daemon: DaemonStarter,
) -> None:
    """Over TLS (the CA as a path or a Buffer, the server name checked or
    overridden) every call works, and a plaintext client or one trusting
    another CA is refused (UnavailableError); with --tls-client-ca, a client without a
    certificate is refused and one with a certificate the CA signed (paths
    or Buffers) works."""
    server = ca.issue_cert("localhost", "127.0.0.1")
    cert, key, ca_file = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    client = ca.issue_cert("agent.example")
    client_cert, client_key = tmp_path / "client.pem", tmp_path / "client.key"
    client.private_key_and_cert_chain_pem.write_to_path(str(client_cert))
    client.private_key_pem.write_to_path(str(client_key))
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    tls_args = ["--tls-cert", str(cert), "--tls-key", str(key)]
    quick = {"attempts": 2, "initialBackoffMs": 10, "maxBackoffMs": 10}

    daemon = start_daemon("lmdb", *tls_args, data_dir=tmp_path / "data", listen=["127.0.0.1:0"])
    try:
        host, port = daemon.target.rsplit(":", 1)
        runs = _secure_runs(
            node_env,
            [
                {"name": "ca-path", "target": daemon.target, "tls": {"ca": str(ca_file)}},
                {
                    "name": "ca-buffer-by-name",
                    "target": f"localhost:{port}",
                    "tls": {"ca": str(ca_file), "buffers": True, "serverName": "localhost"},
                },
                {"name": "plaintext", "target": daemon.target, "retry": quick},
                {
                    "name": "untrusted",
                    "target": daemon.target,
                    "tls": {"ca": str(other_ca)},
                    "retry": quick,
                },
            ],
        )
    finally:
        status = daemon.stop()
    assert status == 0, daemon.log_lines
    assert host == "127.0.0.1"
    assert runs["ca-path"] == SECURE_OK
    assert runs["ca-buffer-by-name"] == SECURE_OK
    assert set(_error_classes(runs["plaintext"]).values()) == {"UnavailableError"}
    assert set(_error_classes(runs["untrusted"]).values()) == {"UnavailableError"}

    mutual = start_daemon(
        "lmdb",
        *tls_args,
        "--tls-client-ca",
        str(ca_file),
        data_dir=tmp_path / "data-mutual",
        listen=["127.0.0.1:0"],
    )
    with_cert = {"ca": str(ca_file), "cert": str(client_cert), "key": str(client_key)}
    try:
        runs = _secure_runs(
            node_env,
            [
                {"name": "paths", "target": mutual.target, "tls": with_cert},
                {"name": "buffers", "target": mutual.target, "tls": {**with_cert, "buffers": True}},
                {
                    "name": "no-cert",
                    "target": mutual.target,
                    "tls": {"ca": str(ca_file)},
                    "retry": quick,
                },
            ],
        )
    finally:
        status = mutual.stop()
    assert status == 0, mutual.log_lines
    assert runs["paths"] == SECURE_OK
    assert runs["buffers"] == SECURE_OK
    assert set(_error_classes(runs["no-cert"]).values()) == {"UnavailableError"}, runs["no-cert"]


@pytest.mark.timeout(180)
def test_typescript_calls_retry_while_the_daemon_restarts(
    typescript_build: Path, node_env: dict[str, str], tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    """With the daemon stopped, calls with one attempt fail with
    UnavailableError at once, and so does a save with an expected version
    (never retried); every other kind of call, made while the daemon is
    down, retries until it is started again and then succeeds."""
    thread = f"ts-retry-{uuid.uuid4()}"
    daemon = start_daemon(data_dir=tmp_path / "data")
    driver = _Driver(
        TS_DIR / RETRY_DRIVER,
        {**node_env, "TURNSTORE_TARGET": daemon.target, "TURNSTORE_THREAD": thread},
    )
    try:
        driver.expect("ready", timeout=60)
        assert daemon.stop() == 0
        driver.send("stopped")
        retrying = driver.expect("retrying", timeout=60)
        daemon.start()  # the same data directory and socket
        driver.send("started")
        done = driver.expect("done", timeout=60)
        assert driver.finish() == 0
    finally:
        driver.finish()
        daemon.stop()
    assert retrying["onceErrors"] == dict.fromkeys(
        ("eventCount", "streamAppend", "replay"), "UnavailableError"
    )
    assert retrying["onceRetries"] == 0
    assert retrying["versionedError"] == "UnavailableError"
    assert retrying["versionedRetries"] == 0
    assert done["results"] == {
        "eventCount": 2,
        "getTurns": [[1, True, 2]],
        "getEvents": [0, 1],
        "readEvents": [0, 1],
        "replay": ["event", "event", "turn_finished", "caught_up"],
        "load": 1,
        "listVersions": [1],
        "save": 1,
        "streamAppend": [0],
        "unaryFinish": "finished",
        "stats": "number",
    }
    assert all(attempts >= 2 for attempts in done["attempts"].values()), done["attempts"]
