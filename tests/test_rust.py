"""The Rust client (client/rust) against real daemons, and its interop with Python and TypeScript.

`cargo test` runs the crate's own suite (the EventStore and HistoryStore
conformance cases through the traits, replay, the shared append stream,
restarts and crashes); each of its tests starts a `turnstore serve` of this
checkout (`TURNSTORE_BIN`). Then the crate's `interop` example writes a thread
that Python and the TypeScript client must read back identically, and reads
back a thread Python wrote. A missing cargo is a failure, not a skip.

Builds go to a fixed CARGO_TARGET_DIR under ~/.cache shared by every
checkout, so only the first run on a machine compiles the dependencies;
without it they build from nothing into client/rust/target.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.commands import run_or_fail
from tests.support.daemon import DaemonStarter
from tests.test_typescript import node_env, typescript_build  # noqa: F401  (fixtures)
from turnstore import AgentEventEnvelope, TurnstoreClient
from turnstore._auth import ClientTls

ROOT = Path(__file__).resolve().parent.parent
RUST_DIR = ROOT / "client" / "rust"
TS_DIR = ROOT / "client" / "typescript"
TURNSTORE_BIN = Path(sys.executable).parent / "turnstore"
CARGO_TIMEOUT = 900.0  # a cold build of the dependencies takes a few minutes on 2 cores


def _target_dir() -> Path:
    """CARGO_TARGET_DIR if set, else one under ~/.cache shared by every checkout.

    Shared, so that a fresh clone (as CI makes) on a machine that built
    before reuses the compiled dependencies; cargo rebuilds what differs.
    """
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"])
    cache = Path.home() / ".cache" / "turnstore"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        return RUST_DIR / "target"
    return cache / "rust-target"


def _cargo_env() -> dict[str, str]:
    return {
        **os.environ,
        "CARGO_TARGET_DIR": str(_target_dir()),
        "TURNSTORE_BIN": str(TURNSTORE_BIN),
        "CARGO_TERM_COLOR": "never",
    }


def _cargo(
    args: list[str], cwd: Path = RUST_DIR, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run cargo in ``cwd`` (client/rust) with ``env`` (:func:`_cargo_env`); fail the test if it fails."""
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.fail("the Rust client's tests need cargo on PATH (https://rustup.rs)")
    return run_or_fail([cargo, *args], cwd, CARGO_TIMEOUT, _cargo_env() if env is None else env)


@pytest.fixture(scope="module")
def interop_program() -> Path:
    """The crate's `interop` example, built (a no-op after `cargo test`)."""
    _cargo(["build", "--locked", "--quiet", "--example", "interop"])
    program = _target_dir() / "debug" / "examples" / "interop"
    assert program.exists(), program
    return program


def _interop(program: Path, args: list[str], env: dict[str, str] | None = None) -> Any:
    result = subprocess.run(
        [str(program), *args],
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"interop {args} exited with {result.returncode}:\n{result.stderr}")
    return json.loads(result.stdout)


async def _python_turns(
    target: str, thread: str, tls: ClientTls | None = None, token: str | None = None
) -> list[dict[str, Any]]:
    async with TurnstoreClient(target, tls=tls, token=token) as client:
        turns = await client.events.get_turns(thread)
    return [
        {"turn": t.turn, "finished": t.finished, "events": [e.to_json_dict() for e in t.events]}
        for t in turns
    ]


@pytest.mark.timeout(CARGO_TIMEOUT + 300)
def test_cargo_test_passes_against_real_daemons() -> None:
    result = _cargo(["test", "--locked"])
    output = result.stdout + result.stderr
    summaries = re.findall(
        r"^test result: (\w+)\. (\d+) passed; (\d+) failed; (\d+) ignored", output, re.M
    )
    assert summaries, output
    assert all(
        status == "ok" and failed == ignored == "0" for status, _, failed, ignored in summaries
    )
    # The daemon-backed suites ran (not only the unit tests).
    for suite in ("event_store", "history_store", "streams"):
        assert re.search(rf"Running tests/{suite}\.rs", output), output
    assert sum(int(passed) for _, passed, _, _ in summaries) >= 25, output


NODE_READER = """
const { TurnstoreClient, envelopeToJson } = require(process.argv[1]);
const client = new TurnstoreClient(process.env.TURNSTORE_TARGET);
client.events.getTurns(process.env.TURNSTORE_THREAD).then((turns) => {
  const flat = turns.map((t) => ({
    turn: t.turn, finished: t.finished, events: t.events.map((e) => envelopeToJson(e.envelope)),
  }));
  console.log(JSON.stringify({ turns: flat }));
  client.close();
}, (error) => { console.error(error); process.exit(1); });
"""


@pytest.mark.timeout(CARGO_TIMEOUT + 300)
def test_a_thread_written_from_rust_reads_back_identically_in_python_and_typescript(
    interop_program: Path,
    typescript_build: Path,  # noqa: F811
    node_env: dict[str, str],  # noqa: F811
    tmp_path: Path,
    start_daemon: DaemonStarter,
) -> None:
    daemon = start_daemon(data_dir=tmp_path / "data")
    try:
        thread = f"rust-{uuid.uuid4()}"
        written = _interop(interop_program, ["write", daemon.target, thread])
        assert [t["turn"] for t in written["turns"]] == [1, 3]
        assert asyncio.run(_python_turns(daemon.target, thread)) == written["turns"]
        index = TS_DIR / "dist" / "src" / "index.js"
        node = subprocess.run(
            ["node", "-e", NODE_READER, str(index)],
            env={**node_env, "TURNSTORE_TARGET": daemon.target, "TURNSTORE_THREAD": thread},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert node.returncode == 0, node.stderr
        assert json.loads(node.stdout)["turns"] == written["turns"]
        # And Rust reads back what it wrote, through the trait.
        assert _interop(interop_program, ["read", daemon.target, thread]) == written
    finally:
        assert daemon.stop() == 0, daemon.log_lines


def _events_python_writes() -> list[tuple[int, bool, list[AgentEventEnvelope]]]:
    usage = {
        "input_tokens": 3,
        "output_tokens": 4,
        "cached_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    return [
        (
            2,
            True,
            [
                AgentEventEnvelope.new({"type": "text_delta", "message_id": "m", "delta": "Hé"}, 0),
                AgentEventEnvelope.new(
                    {
                        "type": "tool_call_start",
                        "id": "c1",
                        "name": "search",
                        "display_name": "Search",
                        "input": {"q": "x\ny", "n": [1, 2.5, None, True, {}]},
                        "tier": "Confirm",
                    },
                    2**40,
                ),
                AgentEventEnvelope.new({"type": "turn_complete", "turn": 2, "usage": usage}, 0),
            ],
        ),
        (5, False, [AgentEventEnvelope.new({"type": "text", "message_id": "m", "text": "😀"}, 7)]),
    ]


def _same_envelope(rust: dict[str, Any], python: dict[str, Any]) -> bool:
    """Equal in every field; the timestamps as instants (Rust writes RFC 3339 anew)."""
    rust, python = dict(rust), dict(python)
    rust_time, python_time = rust.pop("timestamp"), python.pop("timestamp")
    return rust == python and datetime.fromisoformat(rust_time) == datetime.fromisoformat(
        python_time
    )


def test_a_thread_written_from_python_reads_back_equal_in_rust(
    interop_program: Path, tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    thread = f"py-{uuid.uuid4()}"
    turns = _events_python_writes()
    # A type newer than the Rust crate's AgentEvent: the trait leaves it out.
    newer = AgentEventEnvelope.new({"type": "hologram_projected", "hue": 7}, 1)

    async def write(target: str) -> None:
        async with TurnstoreClient(target) as client:
            for turn, finished, events in turns:
                await client.events.append_many(thread, turn, events)
                if turn == 2:
                    await client.events.append(thread, turn, newer)
                if finished:
                    await client.events.finish_turn(thread, turn)

    daemon = start_daemon(data_dir=tmp_path / "data")
    try:
        asyncio.run(write(daemon.target))
        read = _interop(interop_program, ["read", daemon.target, thread])["turns"]
    finally:
        assert daemon.stop() == 0, daemon.log_lines
    assert [(t["turn"], t["finished"]) for t in read] == [(2, True), (5, False)]
    for got, (_, _, events) in zip(read, turns, strict=True):
        expected = [e.to_json_dict() for e in events]
        assert len(got["events"]) == len(expected)
        for rust_event, python_event in zip(got["events"], expected, strict=True):
            assert _same_envelope(rust_event, python_event), (rust_event, python_event)


def test_rust_over_mutual_tls_with_a_token(
    interop_program: Path, tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    agent = ca.issue_cert("agent.example")
    agent.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "agent.pem"))
    agent.private_key_pem.write_to_path(str(tmp_path / "agent.key"))
    (tmp_path / "token").write_text("rust-token\n")
    daemon = start_daemon(
        "lmdb",
        "--tls-cert",
        str(tmp_path / "server.pem"),
        "--tls-key",
        str(tmp_path / "server.key"),
        "--tls-client-ca",
        str(tmp_path / "ca.pem"),
        "--auth-token-file",
        str(tmp_path / "token"),
        data_dir=tmp_path / "data",
        listen=["127.0.0.1:0"],
    )
    tls_env = {
        "TURNSTORE_TLS_CA": str(tmp_path / "ca.pem"),
        "TURNSTORE_TLS_CERT": str(tmp_path / "agent.pem"),
        "TURNSTORE_TLS_KEY": str(tmp_path / "agent.key"),
        "TURNSTORE_TOKEN": "rust-token",
    }
    try:
        thread = f"tls-{uuid.uuid4()}"
        written = _interop(interop_program, ["write", daemon.target, thread], tls_env)
        tls = ClientTls(tmp_path / "ca.pem", tmp_path / "agent.pem", tmp_path / "agent.key")
        turns = asyncio.run(_python_turns(daemon.target, thread, tls, "rust-token"))
        assert turns == written["turns"]
        # Without the token the same TLS client is refused.
        refused = subprocess.run(
            [str(interop_program), "read", daemon.target, thread],
            env={**os.environ, **tls_env, "TURNSTORE_TOKEN": ""},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode != 0
        assert "Unauthenticated" in refused.stderr, refused.stderr
    finally:
        assert daemon.stop() == 0, daemon.log_lines
