"""Running the other languages' tools from a test: one command, its output kept for the failure."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


def run_or_fail(
    args: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` in ``cwd``; fail the test with the output if it fails or takes over ``timeout`` s.

    Standard input is closed (a tool that asks for input fails instead of
    hanging); the last 20,000 characters of each stream are shown.
    """
    try:
        result = subprocess.run(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{' '.join(args)} took over {timeout} s:\n{error.stdout!s}\n{error.stderr!s}")
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} in {cwd} exited with {result.returncode}:\n"
            f"{result.stdout[-20000:]}\n{result.stderr[-20000:]}"
        )
    return result
