"""The Rust client as a published crate: packaged, unpacked outside the checkout, used by a new crate.

`cargo package` of client/rust (as `cargo publish` would upload it) is
unpacked into a temporary directory outside the checkout; a new crate there
(tests/rust_package_consumer/src/main.rs) depends on the unpacked crate by
path, builds it (its build.rs generates the gRPC code from the crate's own
proto copy, with the vendored protoc: no protoc on PATH, `PROTOC` unset), and
appends and reads a thread through agent-sdk's `EventStore` against a real
daemon; Python reads the same thread back. A build.rs that reached back into
the repository (`../../proto`), a proto left out of the package, or a
dependency by path would fail here.

Builds share tests/test_rust.py's CARGO_TARGET_DIR, and the new crate starts
from the packaged Cargo.lock, so only the unpacked crate itself compiles anew
(about 20 s on 2 cores once `cargo test` has built the dependencies). The
README's first-call program is compiled against the package as well.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tarfile
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import DaemonStarter
from tests.test_rust import CARGO_TIMEOUT, _target_dir
from tests.test_rust import _cargo as cargo_in
from turnstore import TurnstoreClient

ROOT = Path(__file__).resolve().parent.parent
RUST_DIR = ROOT / "client" / "rust"
PROTO = Path("proto") / "turnstore" / "v1" / "turnstore.proto"
CONSUMER_MAIN = Path(__file__).resolve().parent / "rust_package_consumer" / "src" / "main.rs"

# What a crate that depends on turnstore-client declares: the client, and what
# its own code calls directly (the trait crates come re-exported from the client).
# tokio's features are a subset of the client's own, so the dependencies
# compiled for the client are reused as they are.
CONSUMER_MANIFEST = """\
[package]
name = "turnstore-package-consumer"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
turnstore-client = {{ path = {crate_dir} }}
anyhow = "1"
serde_json = "1"
tokio = {{ version = "1", features = ["rt", "macros"] }}
"""


def _cargo(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run cargo in `cwd` with the shared target dir and no PROTOC; fail the test if it fails."""
    env = {**os.environ, "CARGO_TARGET_DIR": str(_target_dir()), "CARGO_TERM_COLOR": "never"}
    env.pop("PROTOC", None)  # the crate must bring its own protoc
    return cargo_in(args, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def unpacked_crate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """client/rust as `cargo package` makes it, unpacked in a directory outside the checkout."""
    work = tmp_path_factory.mktemp("rust-package")
    assert not work.resolve().is_relative_to(ROOT), work
    # --no-verify: the consumer's build below is the verification (and builds
    # the crate once, not twice); --allow-dirty: packages the working tree as it is.
    _cargo(
        ["package", "--locked", "--no-verify", "--allow-dirty", "--target-dir", str(work / "out")],
        cwd=RUST_DIR,
    )
    (crate_file,) = (work / "out" / "package").glob("turnstore-client-*.crate")
    with tarfile.open(crate_file) as archive:
        archive.extractall(work / "unpacked", filter="data")
    (crate_dir,) = (work / "unpacked").iterdir()
    return crate_dir


def test_the_package_has_what_it_builds_from_and_nothing_else(unpacked_crate: Path) -> None:
    files = sorted(p.relative_to(unpacked_crate).as_posix() for p in unpacked_crate.rglob("*"))
    files = [f for f in files if (unpacked_crate / f).is_file()]
    top_level = {
        ".cargo_vcs_info.json",
        "Cargo.toml",
        "Cargo.toml.orig",
        "Cargo.lock",
        "README.md",
        "LICENSE",
        "build.rs",
    }
    for name in files:
        assert (
            name in top_level
            or (name.startswith("src/") and name.endswith(".rs"))
            or name == PROTO.as_posix()
        ), f"{name} should not be in the package"
    for needed in ("Cargo.toml", "Cargo.lock", "README.md", "LICENSE", "build.rs", "src/lib.rs"):
        assert needed in files, files
    # The licence text itself (the repository's, through the crate's link to it).
    assert (unpacked_crate / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()
    # The proto it compiles is the repository's, byte for byte.
    assert (unpacked_crate / PROTO).read_bytes() == (ROOT / PROTO).read_bytes()

    # Nothing refers back to the checkout: no absolute path into it, no path
    # into the repository around the crate (the README may describe the
    # repository to its readers), no path dependency.
    for name in files:
        text = (unpacked_crate / name).read_text(encoding="utf-8")
        assert str(ROOT) not in text, f"{name} names the checkout"
        if name != "README.md":
            assert "../../" not in text and ".venv" not in text, name
    for name in ("Cargo.toml", "build.rs"):
        assert "../" not in (unpacked_crate / name).read_text(encoding="utf-8"), name
    manifest = tomllib.loads((unpacked_crate / "Cargo.toml").read_text(encoding="utf-8"))
    for dependency in manifest["dependencies"].values():
        assert "path" not in dependency, dependency

    # Publishable, with the metadata crates.io shows.
    package = manifest["package"]
    assert package.get("publish", True) is not False
    assert package["license"] == "Apache-2.0"
    assert package["readme"] == "README.md"
    assert package["description"]
    assert 1 <= len(package["keywords"]) <= 5
    assert package["categories"]


def _readme_first_call(readme: Path) -> str:
    """The README's first Rust code block that has a `main`: its "first call" program."""
    blocks = re.findall(r"^```rust\n(.*?)^```", readme.read_text(encoding="utf-8"), re.M | re.S)
    programs = [block for block in blocks if "fn main()" in block]
    assert programs, f"{readme} shows no complete first program"
    return str(programs[0])


async def _python_turns(target: str, thread: str) -> list[dict[str, Any]]:
    async with TurnstoreClient(target) as client:
        turns = await client.events.get_turns(thread)
    return [
        {"turn": t.turn, "finished": t.finished, "events": [e.to_json_dict() for e in t.events]}
        for t in turns
    ]


@pytest.mark.timeout(CARGO_TIMEOUT + 300)
def test_a_crate_outside_the_checkout_appends_and_reads_through_the_packaged_crate(
    unpacked_crate: Path, tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    consumer = tmp_path / "consumer"
    (consumer / "src").mkdir(parents=True)
    shutil.copy(CONSUMER_MAIN, consumer / "src" / "main.rs")
    # The README's first call (it dials the default target) compiles against the package too.
    (consumer / "src" / "bin").mkdir()
    (consumer / "src" / "bin" / "readme_first_call.rs").write_text(
        _readme_first_call(unpacked_crate / "README.md")
    )
    (consumer / "Cargo.toml").write_text(
        CONSUMER_MANIFEST.format(crate_dir=json.dumps(str(unpacked_crate)))
    )
    # The versions the crate was tested with (and compiled in the shared target dir).
    shutil.copy(unpacked_crate / "Cargo.lock", consumer / "Cargo.lock")
    _cargo(["build", "--quiet"], cwd=consumer)
    program = _target_dir() / "debug" / "turnstore-package-consumer"
    assert program.exists(), program

    daemon = start_daemon(data_dir=tmp_path / "data")
    try:
        thread = f"packaged-{uuid.uuid4()}"
        result = subprocess.run(
            [str(program), daemon.target, thread],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        read = json.loads(result.stdout)
        python_read = asyncio.run(_python_turns(daemon.target, thread))
    finally:
        assert daemon.stop() == 0, daemon.log_lines

    assert read["count"] == 6
    assert [(t["turn"], t["finished"]) for t in read["turns"]] == [(1, True), (2, False)]
    first, second = read["turns"]
    assert "".join(e["delta"] for e in first["events"]) == "Hello from a packaged crate"
    assert [e["text"] for e in second["events"]] == ["still open"]
    assert [e["sequence"] for t in read["turns"] for e in t["events"]] == list(range(6))
    # What the packaged client read through the trait is what the daemon holds.
    assert python_read == read["turns"]


def test_make_check_fails_when_the_crates_proto_copy_differs(tmp_path: Path) -> None:
    """The crate builds from its own copy of the proto; `make rust-proto-check` keeps it equal."""
    copy = RUST_DIR / PROTO
    assert copy.read_bytes() == (ROOT / PROTO).read_bytes(), "stale proto copy: run make proto"
    make = shutil.which("make")
    assert make is not None, "make is not on PATH"
    in_step = subprocess.run(
        [make, "--no-print-directory", "rust-proto-check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert in_step.returncode == 0, in_step.stdout + in_step.stderr

    drifted = tmp_path / "turnstore.proto"
    drifted.write_text(copy.read_text(encoding="utf-8") + "\n// an edit made to one copy only\n")
    stale = subprocess.run(
        [make, "--no-print-directory", "rust-proto-check", f"RUST_PROTO_COPY={drifted}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert stale.returncode != 0
    assert f"stale proto copy: {drifted}" in stale.stdout, stale.stdout + stale.stderr
