"""The Python package as a user gets it: built, installed elsewhere, and run.

``pip wheel .`` must pack the client (client/python/turnstore), the daemon
(server/turnstore/server) and its web inspector into one ``turnstore``
package. A release build (``python -m build``: the sdist, then the wheel
built from the sdist alone) must carry the licence and complete metadata,
and the wheel must work in a fresh venv outside the checkout: the client
alone (it talks to a daemon; ``turnstore serve`` says the server extra is
missing), and with ``[server]`` (``turnstore serve`` from that venv stores
and answers). One licence, Apache-2.0, in LICENSE and in every manifest.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from turnstore import AgentEventEnvelope, TurnstoreClient

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
VERSION: str = PYPROJECT["version"]

# Installing grpcio, protobuf and (for [server]) lmdb, psycopg, aiohttp... from
# pip's cache takes 10-40 s on a loaded machine; building needs hatchling.
INSTALL_TIMEOUT = 600

# Run inside a fresh venv: append a turn through that venv's client, read it
# back, and say which copy of turnstore did it.
CLIENT_SCRIPT = """
import asyncio, json, sys

import turnstore
from turnstore import AgentEventEnvelope, TurnstoreClient


async def main(target: str, thread: str) -> None:
    async with TurnstoreClient(target) as client:
        for sequence, text in enumerate(["Hel", "lo"]):
            envelope = AgentEventEnvelope.new({"type": "text_delta", "delta": text}, sequence)
            await client.events.append(thread, 1, envelope)
        await client.events.finish_turn(thread, 1)
        turn = await client.events.get_turn(thread, 1)
    assert turn is not None
    print(json.dumps({
        "file": turnstore.__file__,
        "finished": turn.finished,
        "deltas": [event.event["delta"] for event in turn.events],
    }))


asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def _run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # Nothing in the environment may point Python back at the checkout.
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}
    }
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _outside_checkout(path: Path) -> Path:
    assert ROOT not in path.resolve().parents, path
    return path


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``python -m build``: the sdist, and the wheel built from that sdist."""
    out = _outside_checkout(tmp_path_factory.mktemp("release"))
    built = _run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], out, 600)
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]
    (sdist,) = out.glob("turnstore-*.tar.gz")
    (wheel,) = out.glob("turnstore-*.whl")
    assert sdist.name == f"turnstore-{VERSION}.tar.gz"
    assert wheel.name == f"turnstore-{VERSION}-py3-none-any.whl"
    return sdist, wheel


def _fresh_venv(where: Path, requirement: str) -> Path:
    """A new venv at ``where`` with ``requirement`` installed; returns its bin directory.

    The venv has no pip of its own (this interpreter's pip installs into it
    with ``--python``) and no access to this venv's packages.
    """
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(where)], where.parent)
    assert made.returncode == 0, made.stderr
    bin_dir = where / "bin"
    installed = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(bin_dir / "python"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ],
        where.parent,
        INSTALL_TIMEOUT,
    )
    assert installed.returncode == 0, installed.stdout[-4000:] + installed.stderr[-4000:]
    return bin_dir


def _imported_from(bin_dir: Path, module: str, cwd: Path) -> str:
    """Where ``module`` is imported from by the venv's Python (the error, if it is not)."""
    probe = f"import {module} as m; print(m.__file__)"
    ran = _run([str(bin_dir / "python"), "-c", probe], cwd)
    return ran.stdout.strip() if ran.returncode == 0 else ran.stderr


@pytest.fixture(scope="module")
def client_venv(release: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel and its client dependencies only."""
    where = _outside_checkout(tmp_path_factory.mktemp("client-venv")) / "venv"
    return _fresh_venv(where, str(release[1]))


@pytest.fixture(scope="module")
def server_venv(release: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``<wheel>[server]``."""
    where = _outside_checkout(tmp_path_factory.mktemp("server-venv")) / "venv"
    return _fresh_venv(where, f"{release[1]}[server]")


class VenvDaemon(Daemon):
    """``turnstore serve`` run by a venv's console script, isolated from the environment.

    ``-I`` keeps ``PYTHONPATH`` and the user's site-packages out, so the
    daemon runs the venv's copy of turnstore and nothing else.
    """

    def __init__(self, bin_dir: Path, data_dir: Path, extra_args: list[str], cwd: Path) -> None:
        super().__init__(data_dir, extra_args=extra_args, cwd=cwd)
        self.bin_dir = bin_dir

    def command(self) -> list[str]:
        args = super().command()  # [python, -m, turnstore, serve, ...]
        script = [str(self.bin_dir / "python"), "-I", str(self.bin_dir / "turnstore")]
        return script + args[args.index("serve") :]


# ---------------------------------------------------------------- one licence


def test_one_licence_apache_2_0_in_the_license_file_and_every_manifest() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text
    assert PYPROJECT["license"] == "Apache-2.0"
    assert PYPROJECT["license-files"] == ["LICENSE"]
    package_json = json.loads((ROOT / "client/typescript/package.json").read_text())
    assert package_json["license"] == "Apache-2.0"
    cargo = tomllib.loads((ROOT / "client/rust/Cargo.toml").read_text())
    assert cargo["package"]["license"] == "Apache-2.0"


# ---------------------------------------------------------------- what is built


def test_the_wheel_installs_one_turnstore_package_that_runs_without_the_clone(
    tmp_path: Path,
) -> None:
    """The README's ``pip wheel --no-deps -w dist .``, straight from the tree."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("turnstore-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.startswith("turnstore-")}
    assert tops == {"turnstore"}
    for wanted in (
        "turnstore/__init__.py",
        "turnstore/v1/turnstore_pb2.py",
        "turnstore/cli/main.py",
        "turnstore/server/daemon/app.py",
        "turnstore/server/storage/lmdb/writer.py",
        "turnstore/server/storage/postgres/engine.py",
        "turnstore/server/api/http/web/index.html",
        "turnstore/py.typed",
        f"turnstore-{VERSION}.dist-info/licenses/LICENSE",
    ):
        assert wanted in names, wanted

    site = tmp_path / "site"
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    # Run from elsewhere with the installed copy first on the path: not the clone.
    probe = (
        "import turnstore, turnstore.server.daemon.app, turnstore.server.api.http.routes; "
        "print(turnstore.__file__); print(turnstore.server.daemon.app.__file__)"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    ran = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    paths = ran.stdout.split()
    assert all(path.startswith(str(site)) for path in paths), paths
    helped = subprocess.run(
        [sys.executable, "-m", "turnstore", "serve", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert helped.returncode == 0 and "--backup-dir" in helped.stdout, helped.stderr


def test_the_sdist_holds_what_builds_the_wheel_and_the_licence(
    release: tuple[Path, Path],
) -> None:
    sdist, _ = release
    prefix = f"turnstore-{VERSION}/"
    with tarfile.open(sdist) as archive:
        names = {name.removeprefix(prefix) for name in archive.getnames()}
        licence = archive.extractfile(prefix + "LICENSE")
        assert licence is not None
        assert licence.read().decode() == (ROOT / "LICENSE").read_text()
    for wanted in (
        "LICENSE",
        "README.md",
        "pyproject.toml",
        "PKG-INFO",
        "proto/turnstore/v1/turnstore.proto",
        "client/python/turnstore/__init__.py",
        "client/python/turnstore/v1/turnstore_pb2.py",
        "server/turnstore/server/daemon/app.py",
        "server/turnstore/server/api/http/web/index.html",
    ):
        assert wanted in names, wanted
    # Not the other clients, the tests or the benchmarks of the repository.
    for unwanted in ("tests/", "bench/", "client/typescript/", "client/rust/", "examples/"):
        assert not any(name.startswith(unwanted) for name in names), unwanted
    assert not any("__pycache__" in name for name in names)


def test_the_wheel_carries_the_licence_and_complete_metadata(
    release: tuple[Path, Path],
) -> None:
    _, wheel = release
    dist_info = f"turnstore-{VERSION}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        licence = archive.read(f"{dist_info}/licenses/LICENSE").decode()
        metadata = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert licence == (ROOT / "LICENSE").read_text()
    assert metadata["Name"] == "turnstore"
    assert metadata["Version"] == VERSION
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["Author"] == "The turnstore authors"
    assert metadata["Summary"] and metadata["Keywords"]
    assert metadata["Description-Content-Type"] == "text/markdown"
    description = metadata.get_payload()
    assert isinstance(description, str) and description.startswith("# turnstore")  # the README
    classifiers = metadata.get_all("Classifier", [])
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Typing :: Typed" in classifiers
    # PEP 639: the licence expression replaces licence classifiers.
    assert not any(classifier.startswith("License ::") for classifier in classifiers)
    # No invented home: the project has no public URL yet.
    assert metadata.get_all("Project-URL") is None and metadata["Home-page"] is None
    assert "server" in metadata.get_all("Provides-Extra", [])
    # The framework adapters' dependencies are extras of their own, never the core's.
    assert "openai-agents" in metadata.get_all("Provides-Extra", [])
    core = [r for r in metadata.get_all("Requires-Dist", []) if "extra ==" not in r]
    assert not any(r.startswith("openai-agents") for r in core), core
    assert "turnstore = turnstore.cli.main:main" in entry_points


# ---------------------------------------------------------------- installed and run


@pytest.mark.timeout(INSTALL_TIMEOUT + 120)
async def test_the_client_alone_in_a_fresh_venv_talks_to_a_daemon_and_cannot_serve(
    client_venv: Path, daemon: Daemon, tmp_path: Path, thread_id: str
) -> None:
    cwd = _outside_checkout(tmp_path)
    package = Path(_imported_from(client_venv, "turnstore", cwd))
    assert client_venv.parent in package.parents, package

    script = cwd / "client_script.py"
    script.write_text(CLIENT_SCRIPT)
    ran = _run([str(client_venv / "python"), str(script), daemon.target, thread_id], cwd)
    assert ran.returncode == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert report == {"file": str(package), "finished": True, "deltas": ["Hel", "lo"]}
    # The daemon (the checkout's) stored what the installed client sent.
    async with TurnstoreClient(daemon.target) as client:
        turn = await client.events.get_turn(thread_id, 1)
    assert turn is not None and turn.finished
    assert [event.event["delta"] for event in turn.events] == ["Hel", "lo"]

    # The client's command line works without the server extra.
    healthy = _run([str(client_venv / "turnstore"), "health", "--target", daemon.target], cwd)
    assert healthy.returncode == 0, healthy.stderr
    for command in (
        [str(client_venv / "turnstore"), "--version"],
        [str(client_venv / "python"), "-m", "turnstore", "--version"],
        [str(client_venv / "turnstore"), "serve", "--version"],
    ):
        printed = _run(command, cwd)
        assert (printed.returncode, printed.stdout, printed.stderr) == (
            0,
            f"turnstore {VERSION}\n",
            "",
        ), command

    # No daemon without the extra: a clear refusal, not a traceback.
    assert "ModuleNotFoundError" in _imported_from(client_venv, "turnstore.server.daemon.app", cwd)
    data_dir = cwd / "data"
    refused = _run(
        [
            str(client_venv / "turnstore"),
            "serve",
            "--data-dir",
            str(data_dir),
            "--listen",
            f"unix:{cwd / 'serve.sock'}",
        ],
        cwd,
    )
    assert refused.returncode == 2, refused.stderr
    assert refused.stdout == "" and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("turnstore serve needs the server extra, which is not")
    assert f"turnstore-{VERSION}-py3-none-any.whl[server]" in refused.stderr
    assert not data_dir.exists()


@pytest.mark.timeout(INSTALL_TIMEOUT + 120)
async def test_the_wheel_with_the_server_extra_in_a_fresh_venv_serves_and_answers(
    server_venv: Path, backend_args: list[str], tmp_path: Path, thread_id: str
) -> None:
    cwd = _outside_checkout(tmp_path)
    for module in (
        "turnstore",
        "turnstore.server.daemon.app",
        "turnstore.server.storage.postgres.engine",
    ):
        where = Path(_imported_from(server_venv, module, cwd))
        assert server_venv.parent in where.parents, (module, where)

    served = VenvDaemon(server_venv, cwd / "data", backend_args, cwd)
    started = served.start()
    try:
        assert started["event"] == "serving"
        assert served.process is not None
        # This process's client (the checkout's) writes and reads back...
        async with TurnstoreClient(served.target) as client:
            envelope = AgentEventEnvelope.new({"type": "text_delta", "delta": "hi"})
            await client.events.append(thread_id, 1, envelope)
            await client.events.finish_turn(thread_id, 1)
            turn = await client.events.get_turn(thread_id, 1)
            assert turn is not None and turn.finished and turn.events == [envelope]
        # ... and so does the venv's own client.
        script = cwd / "client_script.py"
        script.write_text(CLIENT_SCRIPT)
        ran = _run(
            [str(server_venv / "python"), str(script), served.target, thread_id + "-venv"], cwd
        )
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout)["deltas"] == ["Hel", "lo"]
    finally:
        status = served.stop()
    assert status == 0, served.log_lines[-20:]


# ---------------------------------------------------------------- the version's one source


def _version_seen(python_path: Path, *flags: str) -> str:
    probe = (
        f"import sys; sys.path.insert(0, {str(python_path)!r}); "
        "from turnstore._version import package_version; print(package_version())"
    )
    ran = subprocess.run(
        [sys.executable, *flags, "-c", probe],
        cwd=python_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.strip()


def test_the_version_is_the_checkouts_pyproject_else_the_installed_metadata(
    tmp_path: Path,
) -> None:
    """A checkout names its own pyproject's version, even beside other installed metadata."""
    source = (ROOT / "client/python/turnstore/_version.py").read_text()

    checkout = tmp_path / "checkout"
    package = checkout / "client/python/turnstore"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "_version.py").write_text(source)
    (checkout / "pyproject.toml").write_text('[project]\nname = "turnstore"\nversion = "9.8.7"\n')
    assert _version_seen(checkout / "client/python", "-I") == "9.8.7"

    # Another project's pyproject is not ours: the installed metadata answers.
    (checkout / "pyproject.toml").write_text('[project]\nname = "other"\nversion = "9.8.7"\n')
    assert _version_seen(checkout / "client/python", "-I") == VERSION

    # A copy outside any checkout, with no installed metadata (-S: no site-packages).
    loose = tmp_path / "loose"
    (loose / "turnstore").mkdir(parents=True)
    (loose / "turnstore/__init__.py").write_text("")
    (loose / "turnstore/_version.py").write_text(source)
    assert _version_seen(loose, "-I") == VERSION
    assert _version_seen(loose, "-I", "-S") == "0+unknown"


def test_the_readme_names_the_version_that_pyproject_builds() -> None:
    """The README's wheel names and ``--version`` output follow pyproject's version."""
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"turnstore-(\d[^-\s]*)-py3-none-any\.whl", readme))
    printed = set(re.findall(r"turnstore (\d+\.\d+\.\d+[^\s`]*)", readme))
    assert named == {VERSION} and printed == {VERSION}, (named, printed)
    assert len(re.findall(r"turnstore \d", readme)) >= 2  # the install block and the table
