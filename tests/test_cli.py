"""The ``turnstore`` command line against real daemons.

Every client subcommand runs as a ``python -m turnstore ...`` subprocess, as
a user would run it: over a Unix socket, over mutual TLS with a token taken
from the environment, into a closed pipe, on a terminal (a pseudo-terminal
for the confirmations and progress lines), and across a daemon restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.daemon import Daemon, DaemonStarter
from turnstore import AgentEventEnvelope, ClientTls, ConversationSnapshot, TurnstoreClient
from turnstore.cli.health import health_status

COMMAND_TIMEOUT = 60.0


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without TURNSTORE_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNSTORE_")}
    return {**env, **extra}


def run(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m turnstore ARGS`` with stdout and stderr piped."""
    return subprocess.run(
        [sys.executable, "-m", "turnstore", *args],
        input=None if stdin is None else stdin.decode(),
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        cwd=cwd,
        timeout=COMMAND_TIMEOUT,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_on_terminal(
    *args: str, answer: bytes | None = None, stdin_tty: bool = True
) -> tuple[int, str, str]:
    """Run the command with stderr (and stdin, when ``stdin_tty``) on a pseudo-terminal.

    ``answer`` is typed on the terminal. Returns the exit status, stdout
    (piped) and everything written to the terminal.
    """
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "turnstore", *args],
            stdin=slave if stdin_tty else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            env=clean_env(),
        )
    finally:
        os.close(slave)
    if answer is not None:
        os.write(master, answer)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert process.stdout is not None
    out = process.stdout.read().decode()
    process.stdout.close()
    return process.wait(timeout=COMMAND_TIMEOUT), out, seen.decode(errors="replace")


def envelope(n: int, text: str = "x") -> AgentEventEnvelope:
    return AgentEventEnvelope(
        f"id-{n}-{text[:20]}", n, "2024-01-01T00:00:00Z", {"type": "text_delta", "delta": text}
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon of this module's own on a Unix socket (listings see only this module)."""
    starter = DaemonStarter(tmp_path_factory.mktemp("cli"), shared=True)
    yield starter()
    starter.close()


@pytest.fixture
async def client(served: Daemon) -> AsyncIterator[TurnstoreClient]:
    async with TurnstoreClient(served.target) as connected:
        yield connected


async def test_threads_are_listed_and_a_listing_resumes(
    served: Daemon, client: TurnstoreClient
) -> None:
    for name in ("list-a", "list-b", "list-c"):
        await client.events.append(name, 1, envelope(1, name))
    await client.events.finish_turn("list-b", 1)
    target = ["--target", served.target]

    listed = json_lines(run("threads", *target, "--start-after", "list-").stdout)
    listed = [t for t in listed if t["thread_id"].startswith("list-")]
    assert [(t["thread_id"], t["event_count"], t["finished_turns"]) for t in listed] == [
        ("list-a", 1, 0),
        ("list-b", 1, 1),
        ("list-c", 1, 0),
    ]
    assert all(t["last_write"].endswith("Z") and t["last_write_unix_nanos"] > 0 for t in listed)

    first = json_lines(run("threads", *target, "--start-after", "list-", "--limit", "2").stdout)
    assert [t["thread_id"] for t in first] == ["list-a", "list-b"]
    rest = run("threads", *target, "--start-after", first[-1]["thread_id"])
    assert [t["thread_id"] for t in json_lines(rest.stdout)][:1] == ["list-c"]

    text = run("threads", *target, "--start-after", "list-a", "--limit", "1", "--format", "text")
    assert text.returncode == 0
    assert text.stdout.startswith("list-b  1 events  1 finished turns  last write 20")
    assert "--start-after 'list-b'" in text.stderr


async def test_turns_shows_each_turn_and_its_events(
    served: Daemon, client: TurnstoreClient, thread_id: str
) -> None:
    await client.events.append_many(thread_id, 1, [envelope(1, "Hel"), envelope(2, "lo")])
    await client.events.finish_turn(thread_id, 1)
    await client.events.append(thread_id, 2, envelope(3, "more"))

    summary = run("turns", thread_id, "--target", served.target)
    assert summary.returncode == 0, summary.stderr
    assert json_lines(summary.stdout) == [
        {"turn": 1, "finished": True, "event_count": 2},
        {"turn": 2, "finished": False, "event_count": 1},
    ]
    full = json_lines(run("turns", thread_id, "--target", served.target, "--events").stdout)
    assert [e["delta"] for e in full[0]["events"]] == ["Hel", "lo"]
    assert full[1]["events"][0]["event_id"] == "id-3-more"

    text = run("turns", thread_id, "--target", served.target, "--events", "--format", "text")
    assert text.stdout.splitlines() == [
        "turn 1  finished  2 events",
        '  text_delta {"delta":"Hel"}',
        '  text_delta {"delta":"lo"}',
        "turn 2  open  1 events",
        '  text_delta {"delta":"more"}',
    ]
    unknown = run("turns", "no-such-thread", "--target", served.target, "--format", "text")
    assert (unknown.returncode, unknown.stdout) == (0, "")
    assert "has no events" in unknown.stderr


async def test_clear_asks_on_a_terminal_and_needs_yes_without_one(
    served: Daemon, client: TurnstoreClient, thread_id: str
) -> None:
    await client.events.append_many(thread_id, 1, [envelope(1), envelope(2)])
    target = ["--target", served.target]

    scripted = run("clear", thread_id, *target)
    assert scripted.returncode == 2 and "pass --yes" in scripted.stderr
    assert await client.events.event_count(thread_id) == 2

    status, _, screen = run_on_terminal("clear", thread_id, *target, answer=b"n\n")
    assert status == 1 and f"Clear thread '{thread_id}' (2 events)? [y/N]" in screen
    assert "not cleared" in screen
    assert await client.events.event_count(thread_id) == 2

    status, _, screen = run_on_terminal("clear", thread_id, *target, answer=b"y\n")
    assert status == 0 and "cleared thread" in screen
    assert await client.events.event_count(thread_id) == 0

    await client.events.append(thread_id, 1, envelope(3))
    assert run("clear", thread_id, *target, "--yes").returncode == 0
    assert await client.events.event_count(thread_id) == 0


async def test_history_loads_lists_and_deletes_a_conversations_snapshots(
    served: Daemon, client: TurnstoreClient
) -> None:
    history = client.history("conv-cli")
    for n in range(1, 4):
        messages = [{"role": "user", "text": f"message {i}"} for i in range(n)]
        await history.save(ConversationSnapshot(messages, [i == 0 for i in range(n)]))
    target = ["--target", served.target]

    latest = json.loads(run("history", "conv-cli", "load", *target).stdout)
    assert latest["key"] == "conv-cli" and latest["version"] == 3
    assert latest["snapshot"]["messages"][2] == {"role": "user", "text": "message 2"}
    assert latest["saved_at"].endswith("Z")
    first = json.loads(run("history", "conv-cli", "load", "--version", "1", *target).stdout)
    assert (first["version"], first["snapshot"]["pinned"]) == (1, [True])
    text = run("history", "conv-cli", "load", *target, "--format", "text")
    assert text.stdout.splitlines()[0] == '   0 * {"role":"user","text":"message 0"}'
    assert text.stdout.splitlines()[1].startswith("   1   {")
    assert "conv-cli version 3, saved" in text.stderr

    versions = json_lines(run("history", "conv-cli", "versions", *target).stdout)
    assert [v["version"] for v in versions] == [3, 2, 1]
    assert all(v["size_bytes"] > 0 and v["content_type"] == "application/json" for v in versions)

    keys = json_lines(run("conversations", *target, "--start-after", "conv-").stdout)
    assert {"key": "conv-cli", "version": 3} in [
        {"key": k["key"], "version": k["version"]} for k in keys
    ]

    refused = run("history", "conv-cli", "delete", *target)
    assert refused.returncode == 2 and "pass --yes" in refused.stderr
    deleted = run("history", "conv-cli", "delete", "--yes", *target)
    assert json.loads(deleted.stdout) == {"key": "conv-cli", "removed_versions": 3}
    gone = run("history", "conv-cli", "load", *target)
    assert gone.returncode == 1 and "nothing is stored" in gone.stderr
    assert run("history", "conv-cli", "versions", *target).stdout == ""


def test_health_needs_neither_the_server_extra_nor_grpc_health(served: Daemon) -> None:
    # A client-only install: importing grpc_health (or the server) fails.
    code = (
        "import sys\n"
        "for name in ('grpc_health', 'grpc_health.v1', 'turnstore.server', 'lmdb'):\n"
        "    sys.modules[name] = None\n"
        "from turnstore.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "health", "--target", served.target],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=COMMAND_TIMEOUT,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "SERVING\n", "")
    by_env = run("health", env=clean_env(TURNSTORE_TARGET=served.target))
    assert (by_env.returncode, by_env.stdout) == (0, "SERVING\n")
    # The default target, 127.0.0.1:7070, is not this daemon.
    elsewhere = run("health", "--target", "unix:/nonexistent/turnstore.sock")
    assert elsewhere.returncode == 1 and "UnavailableError" in elsewhere.stderr


def test_health_responses_are_decoded_by_hand() -> None:
    assert health_status(b"") == 0  # UNKNOWN: the default is not encoded
    assert health_status(b"\x08\x01") == 1
    assert health_status(b"\x08\x02") == 2
    # Unknown fields of every wire type are skipped.
    assert health_status(b"\x12\x03abc\x08\x01\x19" + bytes(8) + b"\x25" + bytes(4)) == 1
    for broken in (b"\x08", b"\x12\x05ab", b"\x0b"):
        with pytest.raises(ValueError):
            health_status(broken)


async def test_tail_into_a_closed_pipe_ends_quietly(
    served: Daemon, client: TurnstoreClient, thread_id: str
) -> None:
    # Far more than a pipe buffer (64 KiB): tail is still writing when head stops.
    text = "y" * 200
    for start in range(0, 2000, 500):
        await client.events.append_many(
            thread_id, 1, [envelope(n, text) for n in range(start, start + 500)]
        )
    status, first, errors = await asyncio.to_thread(_read_one_line_and_close, served, thread_id)
    assert first["position"] == 0
    assert (status, errors) == (0, "")


def _read_one_line_and_close(served: Daemon, thread_id: str) -> tuple[int, dict[str, Any], str]:
    """Run ``tail THREAD``, read one line and close the pipe, as ``head -1`` does."""
    process = subprocess.Popen(
        [sys.executable, "-m", "turnstore", "tail", thread_id, "--target", served.target],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )
    assert process.stdout is not None and process.stderr is not None
    first = json.loads(process.stdout.readline())
    process.stdout.close()
    status = process.wait(timeout=COMMAND_TIMEOUT)
    errors = process.stderr.read().decode()
    process.stderr.close()
    return status, first, errors


async def _read_json_line(stream: asyncio.StreamReader) -> dict[str, Any]:
    line = await asyncio.wait_for(stream.readline(), COMMAND_TIMEOUT)
    assert line, "tail ended early"
    parsed: dict[str, Any] = json.loads(line)
    return parsed


async def test_tail_follow_resumes_across_a_daemon_restart_with_every_event_once(
    data_dir: Path,
    start_daemon: DaemonStarter,
) -> None:
    daemon = start_daemon(data_dir=data_dir)
    thread = "followed"
    async with TurnstoreClient(daemon.target) as client:
        await client.events.append_many(thread, 1, [envelope(n) for n in range(50)])
    tail = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "turnstore",
        "tail",
        thread,
        "--follow",
        "--target",
        daemon.target,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )
    assert tail.stdout is not None and tail.stderr is not None
    try:
        lines = [await _read_json_line(tail.stdout) for _ in range(51)]
        assert lines[-1] == {"marker": "caught_up", "next_position": 50}

        assert daemon.stop() == 0
        daemon.start()  # the same socket path and data
        async with TurnstoreClient(daemon.target) as client:
            await client.events.append_many(thread, 1, [envelope(n) for n in range(50, 100)])
            await client.events.finish_turn(thread, 1)
            while len([x for x in lines if "position" in x]) < 100:
                lines.append(await _read_json_line(tail.stdout))
            lines.append(await _read_json_line(tail.stdout))
            await client.events.clear(thread)  # ends the follow
            lines.append(await _read_json_line(tail.stdout))
        status = await asyncio.wait_for(tail.wait(), COMMAND_TIMEOUT)
        errors = (await tail.stderr.read()).decode()
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()
    assert status == 0, errors
    positions = [x["position"] for x in lines if "position" in x]
    assert positions == list(range(100))
    assert [x["event_id"] for x in lines if "position" in x] == [f"id-{n}-x" for n in range(100)]
    markers = [x for x in lines if "marker" in x]
    assert markers[:2] == [
        {"marker": "caught_up", "next_position": 50},
        {"marker": "turn_finished", "turn": 1, "event_count": 100, "last_position": 99},
    ]
    assert [x["marker"] for x in markers[2:]] == ["thread_cleared"]
    assert "daemon unavailable" in errors and "resuming after position 49" in errors
    assert daemon.stop() == 0


async def test_tail_follow_gives_up_when_the_daemon_stays_away(
    data_dir: Path, thread_id: str, start_daemon: DaemonStarter
) -> None:
    daemon = start_daemon(data_dir=data_dir)
    async with TurnstoreClient(daemon.target) as client:
        await client.events.append_many(thread_id, 1, [envelope(n) for n in range(3)])
    tail = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "turnstore",
        "tail",
        thread_id,
        "-f",
        "--reconnect-for",
        "1",
        "--target",
        daemon.target,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )
    assert tail.stdout is not None
    try:
        for _ in range(4):  # three events and caught_up
            await _read_json_line(tail.stdout)
        assert daemon.stop() == 0
        out, err = await asyncio.wait_for(tail.communicate(), COMMAND_TIMEOUT)
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()
    assert tail.returncode == 1 and out == b""
    assert "gave up" in err.decode() and "resume with --after 2" in err.decode()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _write(path: Path, blob: trustme.Blob) -> Path:
    blob.write_to_path(str(path))
    return path


async def test_every_client_subcommand_reaches_a_mutual_tls_daemon_with_a_token(
    tmp_path: Path, ca: trustme.CA, start_daemon: DaemonStarter
) -> None:
    server = ca.issue_cert("localhost", "127.0.0.1")
    agent = ca.issue_cert("agent.example")
    ca_file = _write(tmp_path / "ca.pem", ca.cert_pem)
    cert = _write(tmp_path / "server.pem", server.private_key_and_cert_chain_pem)
    key = _write(tmp_path / "server.key", server.private_key_pem)
    client_cert = _write(tmp_path / "agent.pem", agent.private_key_and_cert_chain_pem)
    client_key = _write(tmp_path / "agent.key", agent.private_key_pem)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    backups = tmp_path / "backups"
    backups.mkdir()
    daemon = start_daemon(
        "lmdb",
        *("--tls-cert", str(cert), "--tls-key", str(key)),
        *("--tls-client-ca", str(ca_file), "--auth-token-file", str(token_file)),
        *("--backup-dir", str(backups)),
        data_dir=tmp_path / "data",
        listen=["127.0.0.1:0"],
    )
    tls = ClientTls(ca_file, cert=client_cert, key=client_key)
    async with TurnstoreClient(daemon.target, tls=tls, token="s3cret-token") as client:
        await client.events.append_many("tls-thread", 1, [envelope(1), envelope(2)])
        await client.events.finish_turn("tls-thread", 1)
        await client.history("tls-key").save(ConversationSnapshot([{"a": 1}], [False]))

    # Everything from the environment, as in the README's sidecar examples.
    env = clean_env(
        TURNSTORE_TARGET=daemon.target,
        TURNSTORE_TLS_CA=str(ca_file),
        TURNSTORE_TLS_CLIENT_CERT=str(client_cert),
        TURNSTORE_TLS_CLIENT_KEY=str(client_key),
        TURNSTORE_TOKEN_FILE=str(token_file),
    )

    async def ok(*args: str, stdin: bytes | None = None) -> str:
        done = await asyncio.to_thread(run, *args, env=env, stdin=stdin, cwd=tmp_path)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    # The reading commands at once (each is a process: this keeps the test short).
    health, threads, turns, tail, stats, keys, load, versions, exported = await asyncio.gather(
        ok("health"),
        ok("threads"),
        ok("turns", "tls-thread"),
        ok("tail", "tls-thread"),
        ok("stats"),
        ok("conversations"),
        ok("history", "tls-key", "load"),
        ok("history", "tls-key", "versions"),
        ok("export"),
    )
    assert health == "SERVING\n"
    assert [t["thread_id"] for t in json_lines(threads)] == ["tls-thread"]
    assert json_lines(turns) == [{"turn": 1, "finished": True, "event_count": 2}]
    assert [x.get("position") for x in json_lines(tail)] == [0, 1, None, None]
    assert json.loads(stats)["events"] == 2
    assert [k["key"] for k in json_lines(keys)] == ["tls-key"]
    assert json.loads(load)["snapshot"]["messages"] == [{"a": 1}]
    assert [v["version"] for v in json_lines(versions)] == [1]
    imported, backup = await asyncio.gather(
        ok("import", stdin=exported.encode()), ok("backup", "copy")
    )
    assert json.loads(imported)["snapshots_unchanged"] == 1
    assert json.loads(backup)["bytes_written"] > 0
    assert json.loads(backup)["dest_dir"] == str(backups / "copy")
    assert (backups / "copy" / "data.mdb").exists()
    await asyncio.gather(
        ok("clear", "tls-thread", "--yes"), ok("history", "tls-key", "delete", "--yes")
    )
    after = json.loads(await ok("stats"))
    assert (after["events"], after["conversations"]) == (0, 0)

    # The same with flags; without the client certificate the handshake fails,
    # and without the token every call but health is refused.
    flags = [
        *("--target", daemon.target, "--tls-ca", str(ca_file)),
        *("--tls-cert", str(client_cert), "--tls-key", str(client_key)),
    ]
    with_flags, no_token, health_flags, no_cert, plain = await asyncio.gather(
        asyncio.to_thread(run, "stats", *flags, "--token-file", str(token_file)),
        asyncio.to_thread(run, "stats", *flags),
        asyncio.to_thread(run, "health", *flags),
        asyncio.to_thread(
            run, "health", "--target", daemon.target, "--tls-ca", str(ca_file), "--timeout", "1"
        ),
        asyncio.to_thread(run, "health", "--target", daemon.target, "--timeout", "1"),
    )
    assert with_flags.returncode == 0 and json.loads(with_flags.stdout)["events"] == 0
    assert no_token.returncode == 1 and "UnauthenticatedError" in no_token.stderr
    assert health_flags.stdout == "SERVING\n"
    assert no_cert.returncode == 1 and "UnavailableError" in no_cert.stderr
    assert "--tls-cert" in no_cert.stderr  # the advice names the TLS options
    assert plain.returncode == 1
    assert daemon.stop() == 0


def test_inconsistent_tls_options_are_refused_before_any_call() -> None:
    half = run("stats", "--tls-ca", "/nonexistent/ca.pem", "--tls-cert", "/nonexistent/c.pem")
    assert half.returncode == 2 and "go together" in half.stderr
    no_ca = run("threads", "--tls-cert", "c.pem", "--tls-key", "k.pem")
    assert no_ca.returncode == 2 and "need --tls-ca" in no_ca.stderr
    from_env = run("health", env=clean_env(TURNSTORE_TLS_CLIENT_CERT="c.pem"))
    assert from_env.returncode == 2 and "TURNSTORE_TLS_CA" in from_env.stderr
    unreadable = run("health", "--tls-ca", "/nonexistent/ca.pem")
    assert unreadable.returncode == 1 and "/nonexistent/ca.pem" in unreadable.stderr
    bad_target = run("stats", "--target", "http://127.0.0.1:7070")
    assert bad_target.returncode == 2 and "take no http:// scheme" in bad_target.stderr


async def test_export_import_and_backup_show_progress_on_a_terminal_only(
    data_dir: Path, tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    (tmp_path / "backups").mkdir()
    daemon = start_daemon("lmdb", "--backup-dir", str(tmp_path / "backups"), data_dir=data_dir)
    async with TurnstoreClient(daemon.target) as client:
        await client.events.append_many("progress", 1, [envelope(n) for n in range(300)])
    target = ["--target", daemon.target]
    export_file = tmp_path / "export.jsonl"

    status, _, screen = run_on_terminal("export", *target, "-o", str(export_file))
    assert status == 0, screen
    assert "\rexported 300 events, " in screen and " events/s, " in screen
    assert "exported 1 threads (300 events" in screen
    piped = run("export", *target)
    assert piped.returncode == 0 and "\r" not in piped.stderr
    assert len(json_lines(piped.stdout)) == 301  # the header and the events

    status, _, screen = run_on_terminal("import", *target, "-i", str(export_file))
    assert status == 0, screen
    size = export_file.stat().st_size
    assert "\rread 301 lines, " in screen and "(100%)" in screen, screen
    assert f"{size} bytes" in screen or "KiB of" in screen
    piped_import = run("import", *target, "-i", str(export_file), "--format", "text")
    assert piped_import.returncode == 0 and "\r" not in piped_import.stderr
    assert "imported 1 threads: 300 events" in piped_import.stdout

    status, _, screen = run_on_terminal("backup", *target, "copy")
    assert status == 0, screen
    assert "\rbackup: " in screen and "(100%)" in screen
    assert (tmp_path / "backups" / "copy" / "data.mdb").exists()
    piped_backup = run("backup", *target, str(tmp_path / "backups" / "copy2"))
    assert piped_backup.returncode == 0 and piped_backup.stderr == ""
    assert daemon.stop() == 0


def test_serve_on_an_address_in_use_says_so_and_creates_nothing(
    served: Daemon, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag, address in (
            ("--listen", f"127.0.0.1:{port}"),
            ("--metrics-listen", f"127.0.0.1:{port}"),
            ("--http-listen", f"127.0.0.1:{port}"),
        ):
            data = tmp_path / f"new-{flag}"
            # gRPC on a socket of its own, not the default 127.0.0.1:7070,
            # which `make run` may be serving while the tests run.
            grpc_listen = [] if flag == "--listen" else ["--listen", f"unix:{tmp_path}/{flag}.sock"]
            refused = run(
                "serve",
                "--data-dir",
                str(data),
                *grpc_listen,
                flag,
                address,
                "--log-format",
                "json",
            )
            assert refused.returncode == 1
            assert f"cannot listen on '127.0.0.1:{port}': address already in use" in (
                refused.stderr
            )
            assert not data.exists()
    # A live daemon's Unix socket is not taken over by a second daemon.
    data = tmp_path / "second"
    refused = run("serve", "--data-dir", str(data), "--listen", served.target)
    assert refused.returncode == 1 and "address already in use" in refused.stderr
    assert not data.exists()
    assert run("health", "--target", served.target).returncode == 0
