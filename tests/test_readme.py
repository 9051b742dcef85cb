"""The README, used as a newcomer uses it: its commands and snippets run in order, twice.

Every fenced block of README.md is one of these (its info string says which):

- ``sh``: run with bash at the root of the checkout, as in the terminal the
  README talks to. The terminal's ``PATH`` starts without ``.venv/bin`` and is
  carried from one block to the next, so ``turnstore`` resolves only because
  the README's own PATH line put it there. ``TURNSTORE_TARGET`` points at the
  test's daemon, as the README says to do for any daemon but ``make run``'s.
- ``sh no-run``: shown, deliberately not run. These are ``make run`` and
  ``make test`` (the test starts its own daemon, on a temporary directory
  and socket: ``make run`` would serve the checkout's ``./turnstore-data`` on
  the fixed port 7070, and ``make test`` is the suite this test is part of)
  and the inspector's ``make run`` with an HTTP listener (the test's daemon
  has one, and :func:`test_the_inspector_the_readme_points_to_is_served`
  fetches the page the README says to open).
- ``python``: saved as ``first.py`` and run with ``.venv/bin/python``.
- ``ts``: saved as ``first.mjs`` in a project whose ``@turnstore/client`` is
  client/typescript, built, and run with node (the snippet is plain
  JavaScript); as ``first.mts`` it also passes strict ``tsc`` against the
  client's declarations.
- ``rust``: built as the program of a new crate depending on client/rust by
  path (in the target directory tests/test_rust.py shares), then run.

The whole sequence runs twice against one daemon: the README promises that
every snippet can be run again, and that the three clients' snippets do not
collide. A block with any other info string fails the test, so no block is
left unchecked by accident.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.commands import run_or_fail
from tests.support.daemon import Daemon
from tests.test_rust import CARGO_TIMEOUT, _target_dir
from tests.test_typescript import node_env, typescript_build  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV_BIN = ROOT / ".venv" / "bin"
RUST_DIR = ROOT / "client" / "rust"
TS_DIR = ROOT / "client" / "typescript"

KINDS = {"sh", "sh no-run", "python", "ts", "rust"}
# A fenced block: the opening fence with its info string, the body, the closing fence.
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)

# A crate as the README describes it: the client by path, tokio, anyhow.
SNIPPET_MANIFEST = """\
[package]
name = "readme-snippet"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
turnstore-client = {{ path = {crate_dir} }}
anyhow = "1"
tokio = {{ version = "1", features = ["rt", "macros"] }}
"""


@dataclass(frozen=True)
class Block:
    """One fenced block of the README: its info string and its text."""

    kind: str
    code: str
    line: int

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.kind})"


def readme_blocks(text: str | None = None) -> list[Block]:
    """The README's fenced blocks, in order."""
    text = README.read_text(encoding="utf-8") if text is None else text
    return [
        Block(m.group(1).strip(), m.group(2), text.count("\n", 0, m.start()) + 1)
        for m in FENCE.finditer(text)
    ]


def _terminal_path() -> str:
    """The PATH of a fresh terminal: this one's without any virtual environment."""
    entries = os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
    venv = os.environ.get("VIRTUAL_ENV")
    kept = [
        entry
        for entry in entries
        if Path(entry).resolve() != VENV_BIN.resolve()
        and not (venv and Path(entry).resolve() == (Path(venv) / "bin").resolve())
    ]
    return os.pathsep.join(kept)


class Terminal:
    """Runs the README's ``sh`` blocks one after the other, carrying PATH like a shell would."""

    def __init__(self, target: str, work: Path) -> None:
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"VIRTUAL_ENV", "PYTHONHOME", "TURNSTORE_TARGET"}
        }
        self.env["PATH"] = _terminal_path()
        self.env["TURNSTORE_TARGET"] = target
        self.state = work / "terminal-path"

    def run(self, block: Block) -> str:
        # -e: any failing command fails the block; the last line hands PATH on.
        script = f"set -e -o pipefail\n{block.code}\nprintf '%s' \"$PATH\" > {self.state}\n"
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"{block} failed:\n{result.stdout}\n{result.stderr}"
        self.env["PATH"] = self.state.read_text()
        return result.stdout


@pytest.fixture
def readme_daemon(
    start_daemon: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch
) -> tuple[Daemon, str]:
    """A daemon of the test's own with the HTTP listener; its gRPC target and HTTP base URL.

    The listener is asked for as the README's inspector block does, through
    ``TURNSTORE_HTTP_LISTEN`` (on a free port instead of 7071).
    """
    monkeypatch.setenv("TURNSTORE_HTTP_LISTEN", "127.0.0.1:0")
    daemon = start_daemon("lmdb")
    serving = json.loads(daemon.log_lines[0])
    return daemon, str(serving["http"])


@pytest.fixture(scope="module")
def ts_project(
    typescript_build: Path,  # noqa: F811 (the imported fixture)
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A project directory where ``@turnstore/client`` is client/typescript, built."""
    project = tmp_path_factory.mktemp("readme-ts")
    scope = project / "node_modules" / "@turnstore"
    scope.mkdir(parents=True)
    (scope / "client").symlink_to(TS_DIR, target_is_directory=True)
    (project / "package.json").write_text('{"type": "module", "private": true}\n')
    return project


def _rust_block() -> Block:
    blocks = [b for b in readme_blocks() if b.kind == "rust"]
    assert len(blocks) == 1, blocks
    return blocks[0]


@pytest.fixture(scope="module")
def rust_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's Rust snippet, built as the program of a new crate."""
    cargo = shutil.which("cargo")
    if cargo is None:
        pytest.fail("the README's Rust snippet needs cargo on PATH (https://rustup.rs)")
    crate = tmp_path_factory.mktemp("readme-rust")
    (crate / "src").mkdir()
    (crate / "src" / "main.rs").write_text(_rust_block().code)
    (crate / "Cargo.toml").write_text(SNIPPET_MANIFEST.format(crate_dir=json.dumps(str(RUST_DIR))))
    # The versions the client is tested with, already compiled in the shared target dir.
    shutil.copy(RUST_DIR / "Cargo.lock", crate / "Cargo.lock")
    env = {**os.environ, "CARGO_TARGET_DIR": str(_target_dir()), "CARGO_TERM_COLOR": "never"}
    run_or_fail([cargo, "build", "--quiet"], cwd=crate, timeout=CARGO_TIMEOUT, env=env)
    program = _target_dir() / "debug" / "readme-snippet"
    assert program.exists(), program
    return program


def _run(args: list[str], cwd: Path, target: str, block: Block) -> str:
    env = {**os.environ, "TURNSTORE_TARGET": target}
    result = subprocess.run(
        args,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{block} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _pyproject_version() -> str:
    match = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert match is not None
    return match.group(1)


@pytest.mark.timeout(CARGO_TIMEOUT + 600)
def test_the_readme_runs_in_order_twice(
    readme_daemon: tuple[Daemon, str],
    ts_project: Path,
    rust_program: Path,
    tmp_path: Path,
) -> None:
    daemon, _ = readme_daemon
    blocks = readme_blocks()
    assert {b.kind for b in blocks} <= KINDS, [str(b) for b in blocks if b.kind not in KINDS]
    assert (VENV_BIN / "python").exists(), (
        "the README's .venv is missing: run make .venv/.installed"
    )
    terminal = Terminal(daemon.target, tmp_path)
    versions: list[int] = []
    ran: list[str] = []
    for _ in range(2):
        for block in blocks:
            if block.kind == "sh no-run":
                continue
            ran.append(block.kind)
            if block.kind == "sh":
                out = terminal.run(block)
                if "turnstore --version" in block.code:
                    assert f"turnstore {_pyproject_version()}" in out.splitlines(), out
                    assert "SERVING" in out.splitlines(), out
                if "turnstore threads" in block.code:
                    # Piped, the commands print JSON lines; each names what the snippets wrote.
                    for name in ("readme-python", "readme-typescript", "readme-rust"):
                        assert f'"{name}"' in out, (name, out)
                    assert '"text_delta"' in out and '"version"' in out, out
            elif block.kind == "python":
                (tmp_path / "first.py").write_text(block.code)
                out = _run([str(VENV_BIN / "python"), "first.py"], tmp_path, daemon.target, block)
                lines = out.splitlines()
                assert lines[:4] == [
                    "stored at position 0",
                    "stored at position 1",
                    "stored at position 2",
                    "Hello!",
                ], out
                match = re.fullmatch(r"snapshot saved as version (\d+) \[.*\]", lines[4])
                assert match is not None, out
                versions.append(int(match.group(1)))
            elif block.kind == "ts":
                (ts_project / "first.mjs").write_text(block.code)
                out = _run(["node", "first.mjs"], ts_project, daemon.target, block)
                assert out.splitlines() == ["true Hello from TypeScript"], out
            elif block.kind == "rust":
                out = _run([str(rust_program)], tmp_path, daemon.target, block)
                assert out.splitlines() == ["2 events"], out
    # Every kind of block ran, twice; the snapshot's stored version went on (not its format's 1).
    assert sorted(set(ran)) == ["python", "rust", "sh", "ts"], ran
    assert versions == [1, 2], versions


def test_the_typescript_snippet_type_checks(ts_project: Path) -> None:
    """The ``ts`` block is TypeScript too: strict ``tsc`` against the client's declarations."""
    blocks = [b for b in readme_blocks() if b.kind == "ts"]
    assert len(blocks) == 1, blocks
    (ts_project / "first.mts").write_text(blocks[0].code)
    config = {
        "compilerOptions": {
            "target": "ES2022",
            "module": "nodenext",
            "moduleResolution": "nodenext",
            "strict": True,
            "noEmit": True,
            # `process` comes from Node's types, installed with the client's tools.
            "typeRoots": [str(TS_DIR / "node_modules" / "@types")],
            "types": ["node"],
        },
        "files": ["first.mts"],
    }
    (ts_project / "tsconfig.json").write_text(json.dumps(config))
    tsc = TS_DIR / "node_modules" / "typescript" / "bin" / "tsc"
    run_or_fail(["node", str(tsc), "-p", "tsconfig.json"], ts_project, timeout=300)


def test_the_inspector_the_readme_points_to_is_served(readme_daemon: tuple[Daemon, str]) -> None:
    """The no-run block's URL: the listener's root is the inspector page."""
    inspector = [b for b in readme_blocks() if "TURNSTORE_HTTP_LISTEN" in b.code]
    assert len(inspector) == 1 and inspector[0].kind == "sh no-run", inspector
    assert "open http://127.0.0.1:7071/" in inspector[0].code
    _, base = readme_daemon
    with urllib.request.urlopen(base + "/", timeout=30) as response:
        assert response.status == 200
        assert response.headers.get_content_type() == "text/html"
        assert "<title>turnstore inspector" in response.read().decode()


def test_blocks_not_run_are_only_those_the_test_replaces() -> None:
    """``no-run`` is for make run / make test and the inspector's restart, nothing else."""
    skipped = [b for b in readme_blocks() if b.kind == "sh no-run"]
    commands = [
        line.split("#")[0].strip()
        for block in skipped
        for line in block.code.splitlines()
        if line.split("#")[0].strip()
    ]
    assert commands == ["make run", "make test", "TURNSTORE_HTTP_LISTEN=127.0.0.1:7071 make run"]


def test_the_fence_parser_sees_info_strings_and_order() -> None:
    text = "x\n```sh\na\n```\n\n```sh no-run\nb\n```\n```python\nc = 1\n```\n"
    blocks = readme_blocks(text)
    assert [(b.kind, b.code, b.line) for b in blocks] == [
        ("sh", "a\n", 2),
        ("sh no-run", "b\n", 6),
        ("python", "c = 1\n", 9),
    ]


def test_readme_length_is_one_sitting() -> None:
    """The issue's bound: about 200-250 lines, the rest in docs/."""
    lines = README.read_text(encoding="utf-8").count("\n")
    assert 150 <= lines <= 270, lines


# --- links between the README, docs/ and bench/README.md -------------------------------

DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        if fence or not line.startswith("#"):
            continue
        slug = _slug(line.lstrip("#"))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(path: Path) -> Iterator[str]:
    fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        if not fence:
            yield from LINK.findall(line)


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for link in _links(page):
        if re.match(r"[a-z]+:", link):
            continue  # http:, https:, mailto:
        file_part, _, anchor = link.partition("#")
        target = (page.parent / file_part).resolve() if file_part else page
        if not target.exists() or (
            anchor and target.suffix == ".md" and anchor not in _anchors(target)
        ):
            broken.append(link)
    assert not broken, broken


def test_the_slugs_follow_github() -> None:
    assert _slug(" Followers' budget") == "followers-budget"
    assert _slug(" The daemon: `turnstore serve`") == "the-daemon-turnstore-serve"
    assert _slug(" Deadlines, keepalives, an unreachable daemon") == (
        "deadlines-keepalives-an-unreachable-daemon"
    )
