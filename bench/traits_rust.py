"""The Rust client's rows of the user-facing table: agent-sdk's ``EventStore``.

``client/rust/examples/bench_append.rs``, built in release mode before the
table's steps (:func:`build`), runs against the table's LMDB daemon: one
task awaiting ``append`` in turns closed by ``finish_turn`` (the Python
``agent`` row's loop), then N tasks at once on one client, each appending
to its own thread (the ``agents`` row's). It prints every latency; the
statistics are drawn here with the Python rows' code (``rate_result``), so
both are counted alike. Without the Python client's share of the time, the
rows show the daemon's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

from bench.common import Result, latency_summary, rate_result

SCENARIOS: Final = ("rust-agents",)
ROOT: Final = Path(__file__).resolve().parent.parent
RUST_DIR: Final = ROOT / "client" / "rust"
EXAMPLE: Final = "bench_append"
# A cold release build of the dependencies takes several minutes on 2 cores.
BUILD_TIMEOUT: Final = 1800.0


def target_dir() -> Path:
    """CARGO_TARGET_DIR if set, else the one under ~/.cache that every checkout shares
    (as ``make rust-check`` and tests/test_rust.py use)."""
    if os.environ.get("CARGO_TARGET_DIR"):
        return Path(os.environ["CARGO_TARGET_DIR"])
    return Path.home() / ".cache" / "turnstore" / "rust-target"


def build(release: bool = True) -> Path:
    """``cargo build --release`` of the example; its path. Raises when it cannot be built.

    ``release=False`` builds the debug profile, whose dependencies the Rust
    tests have already built: for a smoke run, not for numbers.
    """
    cargo = shutil.which("cargo")
    if cargo is None:
        raise RuntimeError("cargo is not on PATH (https://rustup.rs); --skip-rust runs without")
    where = target_dir()
    completed = subprocess.run(
        [
            cargo,
            "build",
            "--locked",
            "--quiet",
            *(["--release"] if release else []),
            "--example",
            EXAMPLE,
        ],
        cwd=RUST_DIR,
        env={**os.environ, "CARGO_TARGET_DIR": str(where), "CARGO_TERM_COLOR": "never"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    if completed.returncode != 0:
        tail = "\n".join(completed.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"cargo build exited with {completed.returncode}: {tail}")
    binary = where / ("release" if release else "debug") / "examples" / EXAMPLE
    if not binary.exists():
        raise RuntimeError(f"cargo built no {binary}")
    return binary


def agents(
    binary: str,
    target: str,
    events_per_turn: int,
    concurrencies: list[int],
    duration: float,
    warmup: float,
    thread_prefix: str,
) -> Result:
    """Run the example; its latencies as the Python rows' results.

    ``agent`` has the shape of ``trait_agent_<side>`` (``append``,
    ``finish``, ``turns``) and ``by_concurrency`` that of
    ``trait_agents_<side>``.
    """
    params = {
        "events_per_turn": events_per_turn,
        "concurrencies": concurrencies,
        "duration": duration,
        "warmup": warmup,
        "thread_prefix": thread_prefix,
    }
    completed = subprocess.run(
        [binary, target, json.dumps(params)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stderr.write(completed.stderr)
    if completed.returncode != 0:
        raise RuntimeError(f"{EXAMPLE} exited with {completed.returncode}")
    out: Any = json.loads(completed.stdout.strip().splitlines()[-1])
    agent = out["agent"]
    by_concurrency = {
        count: {
            **rate_result(len(each["latencies_s"]), each["elapsed_s"], each["latencies_s"]),
            "warmup_count": each["warmup_count"],
        }
        for count, each in out["agents"].items()
    }
    return {
        "agent": {
            "append": rate_result(len(agent["append_s"]), agent["elapsed_s"], agent["append_s"]),
            "finish": latency_summary(agent["finish_s"]),
            "turns": agent["turns"],
            "events_per_turn": agent["events_per_turn"],
        },
        "by_concurrency": by_concurrency,
        "thread_prefix": thread_prefix,
    }


def run(scenario: str, params: dict[str, Any]) -> Result:
    """Entry point for ``bench.client``."""
    if scenario == "rust-agents":
        return agents(**params)
    raise ValueError(scenario)
