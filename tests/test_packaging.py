"""The wheel the README's install lines build: one `turnstore` namespace, nothing else.

``pip wheel .`` must pack the client (client/python/turnstore), the daemon
(server/turnstore/server) and its web inspector into one ``turnstore``
package, and the installed wheel must import and serve without the clone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_installs_one_turnstore_package_that_runs_without_the_clone(
    tmp_path: Path,
) -> None:
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
        "turnstore/server/app.py",
        "turnstore/server/lmdb_engine/writer.py",
        "turnstore/server/pg_engine/engine.py",
        "turnstore/server/web/index.html",
        "turnstore/py.typed",
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
        "import turnstore, turnstore.server.app, turnstore.server.httpapi; "
        "print(turnstore.__file__); print(turnstore.server.app.__file__)"
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
