"""`make test`'s worker groups hold: tests of one xdist group run on one worker.

`make test` runs the suite with `-n 2 --dist loadgroup`, and tests/conftest.py
puts the files that build client/typescript in one group, so that no node
process of one worker runs from a dist/ another worker is rebuilding. With
pytest 9 and pytest-xdist 3.8 the groups were silently ignored (xdist writes a
node id field pytest 9 no longer reads) and a fresh-clone run failed on an
`npm run build` racing another. This runs a small suite the same way and
looks where each test ran.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

FILE = """
import pytest

pytestmark = pytest.mark.xdist_group("shared")

@pytest.mark.parametrize("n", range(6))
def test_one(n):
    pass
"""


def test_a_group_of_two_files_runs_on_one_worker(tmp_path: Path) -> None:
    for name in ("test_first.py", "test_second.py"):
        (tmp_path / name).write_text(FILE)
    (tmp_path / "test_other.py").write_text(FILE.replace('"shared"', '"other"'))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "-v",
            "-p",
            "no:cacheprovider",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    workers: dict[str, set[str]] = {}
    for worker, test_file in re.findall(r"\[(gw\d+)\].*PASSED (test_\w+)\.py", done.stdout):
        workers.setdefault(test_file, set()).add(worker)
    assert set(workers) == {"test_first", "test_second", "test_other"}, done.stdout
    assert len(workers["test_first"] | workers["test_second"]) == 1, workers
    assert len(workers["test_other"]) == 1, workers
