"""Every error of the ``turnstore`` command line says what to do next (issue 23).

Each command runs as a ``python -m turnstore ...`` subprocess, as a user
would run it, against a real daemon (a module daemon on a Unix socket that
requires a token) or against no daemon at all. The assertions check that a
message names the fix (the option, the command to start the daemon, the
user's own path), that no Python internals leak (``[Errno N]``, tracebacks,
temporary file names), and that the exit statuses are those docs/cli.md
lists: 1 when the daemon or a file fails, 2 for bad usage.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, DaemonStarter
from tests.test_cli import COMMAND_TIMEOUT, clean_env, json_lines, run
from turnstore import AgentEventEnvelope, ConversationSnapshot, TurnstoreClient
from turnstore._version import package_version

TOKEN = "cli-errors-token"

# Every client subcommand, with the arguments it needs to get as far as the
# daemon (the thread, key or destination; --yes for the destructive ones).
EVERY_COMMAND: list[list[str]] = [
    ["health"],
    ["threads"],
    ["turns", "t"],
    ["tail", "t"],
    ["clear", "t", "--yes"],
    ["conversations"],
    ["history", "k", "load"],
    ["history", "k", "versions"],
    ["history", "k", "delete", "--yes"],
    ["stats"],
    ["backup", "copy"],
    ["export"],
    ["import"],  # reads IMPORT_INPUT
]

# One snapshot to import: an import of nothing would not need the daemon.
IMPORT_INPUT = (
    json.dumps({"kind": "header", "format": "turnstore-export", "version": 1})
    + "\n"
    + json.dumps(
        {"kind": "snapshot", "key": "k", "version": 1, "content_type": "", "data_base64": ""}
    )
    + "\n"
).encode()


def run_command(command: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run one of EVERY_COMMAND with ``args`` after it (and the import's input)."""
    return run(*command, *args, stdin=IMPORT_INPUT if command == ["import"] else None)


def assert_no_internals(stderr: str) -> None:
    """No traceback, no ``[Errno N]``, no temporary file name in a message."""
    assert "Traceback" not in stderr, stderr
    assert "[Errno" not in stderr, stderr
    assert ".partial" not in stderr, stderr


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-errors-token") / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, token_file: Path) -> Iterator[Daemon]:
    """A daemon of this module's own on a Unix socket, requiring the token."""
    starter = DaemonStarter(tmp_path_factory.mktemp("cli-errors"), shared=True)
    yield starter("lmdb", "--auth-token-file", str(token_file))
    starter.close()


@pytest.fixture
async def client(guarded: Daemon) -> AsyncIterator[TurnstoreClient]:
    async with TurnstoreClient(guarded.target, token=TOKEN) as connected:
        yield connected


def free_port() -> int:
    """A loopback TCP port nobody listens on (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("target", ["localhost:99999", "localhost", "bogus"])
def test_every_command_health_too_refuses_a_malformed_target_before_dialling(target: str) -> None:
    # `health` used to skip the check: localhost:99999 dialled a wrapped-round
    # port, `localhost` went to 443 and `bogus` was looked up in the DNS.
    # Every command for one target (they share the check), two for the others.
    commands = EVERY_COMMAND if target == "localhost:99999" else [["health"], ["threads"]]
    for command in commands:
        done = run_command(command, "--target", target)
        assert done.returncode == 2, (command, done.stderr)
        assert f"target {target!r}" in done.stderr, (command, done.stderr)
        assert "a target is HOST:PORT (127.0.0.1:7070" in done.stderr, (command, done.stderr)
        assert "UNAVAILABLE" not in done.stderr and "resolving" not in done.stderr
        assert_no_internals(done.stderr)
    from_env = run("health", env=clean_env(TURNSTORE_TARGET=target))
    assert from_env.returncode == 2
    assert "(from TURNSTORE_TARGET)" in from_env.stderr, from_env.stderr


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_no_daemon_there_says_to_start_one_or_pass_target(kind: str, tmp_path: Path) -> None:
    target = f"127.0.0.1:{free_port()}" if kind == "tcp" else f"unix:{tmp_path}/none.sock"
    for command in EVERY_COMMAND:
        done = run_command(command, "--target", target)
        assert done.returncode == 1, (command, done.stderr)
        assert "UnavailableError: cannot reach" in done.stderr, (command, done.stderr)
        assert "`turnstore serve`" in done.stderr and "`make run`" in done.stderr
        assert "--target HOST:PORT or unix:PATH" in done.stderr
        assert "TURNSTORE_TARGET" in done.stderr
        assert_no_internals(done.stderr)


class ClosingListener:
    """A TCP listener that closes every connection at once, counting them.

    What a client sees of a port that is not a gRPC daemon: every call fails
    with UnavailableError, and the count says how often the command dialled.
    """

    def __init__(self) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(64)
        self.target = f"127.0.0.1:{self._socket.getsockname()[1]}"
        self.connections = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.connections += 1
            connection.close()

    def take_count(self) -> int:
        with self._lock:
            count, self.connections = self.connections, 0
        return count

    def close(self) -> None:
        self._socket.close()
        self._thread.join(timeout=10)


def test_every_command_has_the_same_retry_policy_one_attempt() -> None:
    # stats, turns and history used to retry six times over about 4 s while
    # threads, export and health gave up after one attempt. Every command now
    # tries once (docs/cli.md, "Retries"). A command fails only once the
    # listener has closed (and counted) each of its connections, so the count
    # is complete when the command has exited.
    listener = ClosingListener()
    try:
        for command in EVERY_COMMAND:
            done = run_command(command, "--target", listener.target)
            assert done.returncode == 1, (command, done.stderr)
            assert "`turnstore serve`" in done.stderr, (command, done.stderr)
            # One connection, or two if gRPC dials again while failing the call:
            # never the six attempts of a retry policy.
            assert listener.take_count() in (1, 2), command
    finally:
        listener.close()


def test_unauthenticated_names_the_token_options(guarded: Daemon, tmp_path: Path) -> None:
    none = run("stats", "--target", guarded.target)
    assert none.returncode == 1
    assert "UnauthenticatedError" in none.stderr
    assert "pass --token-file FILE" in none.stderr, none.stderr
    assert "TURNSTORE_TOKEN_FILE" in none.stderr and "TURNSTORE_AUTH_TOKEN" in none.stderr

    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-token\n")
    refused = run("threads", "--target", guarded.target, "--token-file", str(wrong))
    assert refused.returncode == 1
    assert "refused the token from --token-file" in refused.stderr, refused.stderr
    from_env = run(
        "threads", env=clean_env(TURNSTORE_TARGET=guarded.target, TURNSTORE_TOKEN_FILE=str(wrong))
    )
    assert "refused the token from TURNSTORE_TOKEN_FILE" in from_env.stderr, from_env.stderr
    by_value = run(
        "threads", env=clean_env(TURNSTORE_TARGET=guarded.target, TURNSTORE_AUTH_TOKEN="nope")
    )
    assert "refused the token from TURNSTORE_AUTH_TOKEN" in by_value.stderr, by_value.stderr
    for done in (none, refused, from_env, by_value):
        assert_no_internals(done.stderr)


def test_a_file_that_cannot_be_read_names_its_option(tmp_path: Path) -> None:
    missing = str(tmp_path / "nofile")
    # Files are read before anything is sent: no daemon is needed.
    by_option = run("threads", "--token-file", missing)
    assert by_option.returncode == 1
    assert f"cannot read --token-file {missing!r}: no such file" in by_option.stderr
    by_env = run("stats", env=clean_env(TURNSTORE_TOKEN_FILE=missing))
    assert f"cannot read TURNSTORE_TOKEN_FILE {missing!r}" in by_env.stderr, by_env.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    blank = run("threads", "--token-file", str(empty))
    assert blank.returncode == 2
    assert "--token-file: the token file" in blank.stderr and "is empty" in blank.stderr
    ca = run("health", "--tls-ca", missing)
    assert ca.returncode == 1 and f"cannot read --tls-ca {missing!r}" in ca.stderr
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")  # read, not parsed: the key fails first
    key = run("stats", "--tls-ca", str(pem), "--tls-cert", str(pem), "--tls-key", missing)
    assert key.returncode == 1 and f"cannot read --tls-key {missing!r}" in key.stderr
    # Not PEM: named here, instead of grpc logging its own source files' names.
    text = tmp_path / "notes.txt"
    text.write_text("not a certificate\n")
    not_pem = run("health", "--target", "127.0.0.1:1", env=clean_env(TURNSTORE_TLS_CA=str(text)))
    assert not_pem.returncode == 1
    assert f"TURNSTORE_TLS_CA {str(text)!r} is not a PEM file" in not_pem.stderr
    assert ".cc:" not in not_pem.stderr, not_pem.stderr
    source = run("import", "--input", missing)
    assert source.returncode == 1 and f"cannot read --input {missing!r}" in source.stderr
    for done in (by_option, by_env, blank, ca, key, not_pem, source):
        assert_no_internals(done.stderr)


def test_exporting_into_a_missing_directory_names_the_users_path(
    guarded: Daemon, tmp_path: Path, token_file: Path
) -> None:
    output = tmp_path / "no-such-dir" / "export.jsonl"
    connection = ["--target", guarded.target, "--token-file", str(token_file)]
    done = run("export", *connection, "-o", str(output))
    assert done.returncode == 1
    assert f"cannot write {str(output)!r}: the directory" in done.stderr, done.stderr
    assert "does not exist" in done.stderr
    assert_no_internals(done.stderr)
    assert not output.parent.exists()


async def test_unknown_threads_and_keys_are_warned_about(
    guarded: Daemon, client: TurnstoreClient, token_file: Path
) -> None:
    connection = ["--target", guarded.target, "--token-file", str(token_file)]
    warning = "warning: thread 'no-such-thread' has no events: unknown, cleared"
    for command in (
        ["turns", "no-such-thread", "--format", "json"],  # piped JSON used to say nothing
        ["turns", "no-such-thread", "--format", "text"],
        ["clear", "no-such-thread", "--yes"],  # used to say "cleared thread"
        ["tail", "no-such-thread", "--format", "json"],
    ):
        done = run(*command, *connection)
        assert done.returncode == 0, done.stderr
        if command[0] == "tail":  # its marker still says where a follow would start
            assert json_lines(done.stdout) == [{"marker": "caught_up", "next_position": 0}]
        else:
            assert done.stdout == ""
        assert warning in done.stderr, (command, done.stderr)
        assert "`turnstore threads` lists the threads" in done.stderr
        assert "cleared thread" not in done.stderr
    no_versions = run("history", "no-such-key", "versions", *connection, "--format", "json")
    assert (no_versions.returncode, no_versions.stdout) == (0, "")
    assert "warning: 'no-such-key': no versions stored" in no_versions.stderr
    nothing_deleted = run("history", "no-such-key", "delete", "--yes", *connection)
    assert nothing_deleted.returncode == 0
    assert "warning: 'no-such-key': no versions stored, nothing deleted" in nothing_deleted.stderr

    # A thread that holds events is not warned about, and is cleared.
    event = AgentEventEnvelope("e1", 1, "2024-01-01T00:00:00Z", {"type": "text_delta"})
    await client.events.append("known", 1, event)
    turns = run("turns", "known", *connection)
    assert turns.returncode == 0 and turns.stderr == ""
    tail = run("tail", "known", *connection)
    assert tail.returncode == 0 and tail.stderr == ""
    cleared = run("clear", "known", "--yes", *connection)
    assert cleared.returncode == 0 and cleared.stderr == "cleared thread 'known'\n"
    assert await client.events.event_count("known") == 0


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["threads", "--limit", "-1"], "argument --limit: -1 is less than 1"),
        (["threads", "--limit", "0"], "argument --limit: 0 is less than 1"),
        (["threads", "--limit", "ten"], "argument --limit: 'ten' is not a whole number"),
        (["conversations", "--limit", "-5"], "argument --limit: -5 is less than 1"),
        (["tail", "t", "--after", "-1"], "argument --after: -1 is less than 0"),
        (["tail", "t", "--reconnect-for", "-3"], "argument --reconnect-for: -3 is not a number"),
        (["history", "k", "load", "--version", "0"], "argument --version: 0 is less than 1"),
        (["health", "--timeout", "0"], "argument --timeout: 0 is not a number of seconds above 0"),
        (["health", "--timeout", "nan"], "argument --timeout: nan is not a number of seconds"),
        (["stats", "--format", "yaml"], "argument --format: invalid choice: 'yaml'"),
    ],
)
def test_option_values_are_checked_and_the_option_named(command: list[str], says: str) -> None:
    # Checked before anything is sent: the default target is never dialled.
    done = run(*command)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr, done.stderr
    assert_no_internals(done.stderr)


async def test_history_takes_its_options_before_or_after_the_action(
    guarded: Daemon, client: TurnstoreClient, token_file: Path
) -> None:
    await client.history("k-before").save(ConversationSnapshot([{"role": "user"}], [False]))
    target = ["--target", guarded.target]
    token = ["--token-file", str(token_file)]
    for args in (
        ["history", "k-before", *target, *token, "load"],  # used to fail: ACTION '--target'?
        ["history", "k-before", *target, "load", *token],
        ["history", "k-before", "load", *target, *token],
        ["history", "k-before", "--format", "json", *token, "load", *target],
    ):
        done = run(*args)
        assert done.returncode == 0, (args, done.stderr)
        assert json.loads(done.stdout)["snapshot"]["messages"] == [{"role": "user"}]
    text = run("history", "k-before", "--format", "text", *target, *token, "versions")
    assert text.returncode == 0 and text.stdout.startswith("version 1  saved "), text.stdout
    # Given on both sides, the value after the action wins.
    listed = run(
        "history", "k-before", "--format", "text", *target, *token, "versions", "--format", "json"
    )
    assert [v["version"] for v in json_lines(listed.stdout)] == [1]


def test_version_and_every_commands_help(tmp_path: Path) -> None:
    version = run("--version")
    assert (version.returncode, version.stdout) == (0, f"turnstore {package_version()}\n")
    installed = Path(sys.executable).parent / "turnstore"
    by_script = subprocess.run(
        [str(installed), "--version"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT
    )
    assert by_script.stdout == version.stdout
    for command in {tuple(c[:1]) if c[0] != "history" else tuple(c[:3]) for c in EVERY_COMMAND}:
        shown = run(*command, "--help")
        assert shown.returncode == 0, (command, shown.stderr)
        # Every client command reaches the daemon the same way.
        for option in ("--target ADDR", "--token-file FILE", "--tls-ca PEM", "--allow-remote"):
            assert option in shown.stdout, (command, option)
        assert "TURNSTORE_TARGET" in shown.stdout, command
    before_action = run("history", "k", "--help")
    assert "--target ADDR" in before_action.stdout and "--format" in before_action.stdout
