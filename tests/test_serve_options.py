"""``turnstore serve``'s options live in the server, and the server needs no client code.

The command line (client/python/turnstore/cli/main.py) only parses and hands over to
:mod:`turnstore.server.daemon.command`; the flags, their TURNSTORE_* variables and
defaults come from :mod:`turnstore.server.daemon.options`. The daemons every
end-to-end test starts (tests/support/daemon.py) exercise the flags themselves.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from turnstore.cli.main import _parser
from turnstore.client import DEFAULT_TARGET
from turnstore.server.daemon.command import config_from_args
from turnstore.server.daemon.options import DEFAULT_LISTEN

ROOT = Path(__file__).resolve().parent.parent
SERVER_DIR = ROOT / "server" / "turnstore" / "server"

# Every option of `turnstore serve` (each also a TURNSTORE_* variable). Removing
# or renaming one breaks deployments that set it.
SERVE_FLAGS = [
    "--data-dir",
    "--listen",
    "--allow-remote",
    "--max-db-size",
    "--delete-reserve",
    "--snapshot-versions",
    "--backup-dir",
    "--log-format",
    "--log-level",
    "--backend",
    "--commit-sync",
    "--postgres-dsn",
    "--postgres-dsn-file",
    "--postgres-pool-size",
    "--retain-threads-for",
    "--retain-conversations-for",
    "--retention-interval",
    "--socket-mode",
    "--auth-token-file",
    "--auth-tokens-file",
    "--tls-cert",
    "--tls-key",
    "--tls-client-ca",
    "--metrics-listen",
    "--http-listen",
    "--http-allow-origin",
    "--http-session-ttl",
    "--http-heartbeat",
    "--http-max-connections",
    "--http-idle-timeout",
    "--max-thread-id-bytes",
    "--max-key-bytes",
    "--max-event-bytes",
    "--max-events-per-append",
    "--max-batch-operations",
    "--max-snapshot-bytes",
    "--max-request-bytes",
    "--max-streams-per-connection",
    "--max-connections",
    "--idle-timeout",
    "--max-events-per-stream-message",
    "--large-decodes",
    "--follower-budget",
    "--followers-total-budget",
]

# Makes the server's dependencies unimportable, as on a client-only install
# (the wheel carries turnstore.server either way; the extra brings LMDB etc.).
WITHOUT_SERVER_EXTRA = (
    "import sys\n"
    "for name in ('lmdb', 'structlog', 'grpc_health', 'grpc_reflection', 'aiohttp'):\n"
    "    sys.modules[name] = None\n"
    "from turnstore.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNSTORE_")}
    return {**env, "COLUMNS": "200", **extra}


def _run(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, env=env, timeout=60
    )


def _env_name(flag: str) -> str:
    return "TURNSTORE_" + flag.removeprefix("--").upper().replace("-", "_")


@pytest.fixture(autouse=True)
def _no_turnstore_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser reads TURNSTORE_* when built: start each test without any."""
    for name in [k for k in os.environ if k.startswith("TURNSTORE_")]:
        monkeypatch.delenv(name)


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: relative import"
            names.append(node.module or "")
    return names


def test_serve_help_lists_every_flag_with_its_variable() -> None:
    done = _run("-m", "turnstore", "serve", "--help", env=_env())
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # help lines wrap anywhere
    for flag in SERVE_FLAGS:
        assert f" {flag} " in text, flag
        assert f"[env {_env_name(flag)}" in text, flag
    assert text.count("[env TURNSTORE_") == len(SERVE_FLAGS)
    assert "[env TURNSTORE_MAX_DB_SIZE; default 16GiB]" in text
    assert "(default: 127.0.0.1:7070) [env TURNSTORE_LISTEN]" in text


def test_serve_help_never_shows_the_postgres_dsn_from_the_environment() -> None:
    dsn = "postgresql://turnstore:hunter2-secret@127.0.0.1:5432/fleet"
    done = _run("-m", "turnstore", "serve", "--help", env=_env(TURNSTORE_POSTGRES_DSN=dsn))
    assert done.returncode == 0, done.stderr
    assert "[env TURNSTORE_POSTGRES_DSN]" in " ".join(done.stdout.split())
    assert "hunter2" not in done.stdout


def test_serve_without_the_server_extra_says_so_and_still_explains_itself(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    refused = _run(
        "-c",
        WITHOUT_SERVER_EXTRA,
        "serve",
        "--data-dir",
        str(data_dir),
        "--listen",
        f"unix:{tmp_path / 's.sock'}",
        env=_env(),
    )
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.startswith(
        "turnstore serve needs the server extra, which is not installed ("
    )
    assert "[server]" in refused.stderr
    assert not data_dir.exists()
    helped = _run("-c", WITHOUT_SERVER_EXTRA, "serve", "--help", env=_env())
    assert helped.returncode == 0 and all(flag in helped.stdout for flag in SERVE_FLAGS)


def test_serve_without_the_server_package_says_so_too() -> None:
    blocked = "import sys\nsys.modules['turnstore.server'] = None\n" + WITHOUT_SERVER_EXTRA
    refused = _run("-c", blocked, "serve", "--data-dir", "/nonexistent/x", env=_env())
    assert refused.returncode == 2
    assert "turnstore serve needs the server extra" in refused.stderr
    # Other subcommands still refuse options they do not have.
    wrong = _run("-c", blocked, "health", "--data-dir", "x", env=_env())
    assert wrong.returncode == 2 and "unrecognized arguments: --data-dir x" in wrong.stderr


# The one client module the daemon shares: how a token file is read.
SHARED_WITH_THE_SERVER = "turnstore._tokenfile"


def test_the_server_imports_no_client_code_but_the_generated_code_and_the_token_file() -> None:
    modules = sorted(SERVER_DIR.rglob("*.py"))
    assert len(modules) > 20
    shared_by = []
    for path in modules:
        ours = [name for name in _imports(path) if name.split(".")[0] == "turnstore"]
        stray = [
            n
            for n in ours
            if not n.startswith(("turnstore.server", "turnstore.v1"))
            and n != SHARED_WITH_THE_SERVER
        ]
        assert not stray, f"{path.relative_to(ROOT)} imports {stray}"
        if SHARED_WITH_THE_SERVER in ours:
            shared_by.append(path.relative_to(SERVER_DIR).as_posix())
    # The daemon reads --auth-token-file with the client's rule, not a copy of it.
    assert shared_by == ["daemon/command.py"]


def test_the_module_shared_with_the_server_needs_only_the_standard_library() -> None:
    shared = ROOT / "client" / "python" / "turnstore" / "_tokenfile.py"
    imported = [name for name in _imports(shared) if name != "__future__"]
    assert imported
    assert [name for name in imported if name.split(".")[0] not in sys.stdlib_module_names] == []


def test_the_options_need_only_the_standard_library() -> None:
    # So `serve --help` works where the server's dependencies are missing.
    imported = _imports(SERVER_DIR / "daemon" / "options.py")
    assert imported
    assert [name for name in imported if name.split(".")[0] not in sys.stdlib_module_names] == []


def test_the_command_line_builds_no_server_configuration() -> None:
    imported = _imports(ROOT / "client" / "python" / "turnstore" / "cli" / "main.py")
    assert sorted(name for name in imported if name.startswith("turnstore.server")) == [
        "turnstore.server.daemon",
        "turnstore.server.daemon.options",
    ]


def test_the_daemon_listens_where_the_client_connects_by_default() -> None:
    assert DEFAULT_LISTEN == DEFAULT_TARGET == "127.0.0.1:7070"
    config = config_from_args(_parser().parse_args(["serve"]))
    assert config.listen == (DEFAULT_TARGET,)


def test_flags_win_over_variables_and_variables_over_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    defaults = config_from_args(_parser().parse_args(["serve"]))
    assert (defaults.allow_remote, defaults.auth_token) == (False, None)
    assert defaults.socket_mode == 0o600
    assert defaults.engine.max_map_bytes == 16 << 30
    assert defaults.engine.data_dir == Path("turnstore-data").resolve()
    assert defaults.follower_limits.message_bytes == 128 << 10

    monkeypatch.setenv("TURNSTORE_LISTEN", "unix:/run/a.sock, 127.0.0.1:7171")
    monkeypatch.setenv("TURNSTORE_ALLOW_REMOTE", "yes")
    monkeypatch.setenv("TURNSTORE_MAX_DB_SIZE", "1GiB")
    monkeypatch.setenv("TURNSTORE_RETAIN_THREADS_FOR", "7d")
    monkeypatch.setenv("TURNSTORE_AUTH_TOKEN", "from-env")
    by_env = config_from_args(_parser().parse_args(["serve"]))
    assert by_env.listen == ("unix:/run/a.sock", "127.0.0.1:7171")
    assert by_env.allow_remote is True and by_env.auth_token == "from-env"
    assert by_env.engine.max_map_bytes == 1 << 30
    assert by_env.engine.retain_threads_for_seconds == 7 * 86400
    # A repeatable flag replaces the variable's list; given twice, it keeps both.
    by_listen = config_from_args(
        _parser().parse_args(["serve", "--listen", "127.0.0.1:7272", "--listen", "unix:/b.sock"])
    )
    assert by_listen.listen == ("127.0.0.1:7272", "unix:/b.sock")

    token_file = tmp_path / "token"
    token_file.write_text("from-file\nignored\n")
    by_flag = config_from_args(
        _parser().parse_args(
            ["serve", "--max-db-size", "2GiB", "--auth-token-file", str(token_file)]
        )
    )
    assert by_flag.auth_token == "from-file" and by_flag.engine.max_map_bytes == 2 << 30
    monkeypatch.setenv("TURNSTORE_HTTP_ALLOW_ORIGIN", "http://a.example")
    by_origin = config_from_args(
        _parser().parse_args(
            ["serve", "--http-listen", "127.0.0.1:0", "--http-allow-origin", "http://b.example"]
        )
    )
    assert by_origin.http is not None
    assert by_origin.http.allow_origins == ("http://b.example",)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls-key", "k.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert and --tls-key"),
        (["--http-allow-origin", "http://a"], "--http-allow-origin needs --http-listen"),
        (
            ["--http-listen", "127.0.0.1:0", "--http-allow-origin", "a.example"],
            "--http-allow-origin 'a.example' is not scheme://host[:port]",
        ),
    ],
)
def test_options_that_do_not_go_together_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError) as refused:
        config_from_args(_parser().parse_args(["serve", *argv]))
    assert str(refused.value) == message
