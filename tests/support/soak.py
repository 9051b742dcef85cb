"""The crash-safety loops of tests/test_crash.py and tests/test_postgres_crash.py, run
for longer (``make soak``).

    python -m tests.support.soak --kills 200 [--seed N] [--data-dir DIR]
    python -m tests.support.soak --backend postgres --kills 30 [--seed N]
    python -m tests.support.soak --backend lmdb-power-cut --kills 200 [--seed N]

With ``--backend lmdb`` (the default) each kill is a SIGKILL of the daemon,
checked after each restart; with ``--backend lmdb-power-cut`` each is a
simulated power cut (tests/test_power_cut.py: every unsynced write lost). With
``--backend postgres`` a cluster of the
run's own is created (as the tests do: installed if missing, removed
afterwards) and each "kill" is one fault of two daemons on it, in turn:
SIGKILL daemon 0, SIGKILL daemon 1, ``pg_ctl stop -m immediate``; everything
is checked at the end. Prints one summary line with the counts and exits
0, or exits 1 with the first inconsistency found (and the seed that
reproduces the run).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from tests.support.postgres import start_postgres
from tests.test_crash import run_crash_loop
from tests.test_postgres_crash import run_postgres_crash_loop
from tests.test_power_cut import run_power_cut_loop


def _run(backend: str, root: Path, kills: int, seed: int) -> dict[str, int]:
    if backend == "lmdb-power-cut":
        return run_power_cut_loop(root, kills, seed)[0]
    if backend == "lmdb":
        return run_crash_loop(root, kills, seed)
    postgres = start_postgres()
    try:
        return run_postgres_crash_loop(postgres, root, kills, seed)
    finally:
        postgres.remove()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.soak", description=__doc__)
    parser.add_argument(
        "--backend",
        choices=("lmdb", "lmdb-power-cut", "postgres"),
        default="lmdb",
        help="lmdb: SIGKILL one daemon; lmdb-power-cut: SIGKILL and every unsynced write "
        "undone; postgres: two daemons and the database (lmdb)",
    )
    parser.add_argument(
        "--kills", type=int, default=200, help="how many SIGKILLs (postgres: faults) (200)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep the data here instead of in a temporary directory (lmdb only)",
    )
    args = parser.parse_args(argv)
    if args.kills < 1:
        parser.error("--kills must be at least 1")
    if args.data_dir is not None and args.backend != "lmdb":
        parser.error("--data-dir is for --backend lmdb (PostgreSQL keeps the data)")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    started = time.monotonic()
    try:
        if args.data_dir is not None:
            counts = _run(args.backend, args.data_dir, args.kills, seed)
        else:
            with tempfile.TemporaryDirectory(prefix="turnstore-soak-") as tmp:
                counts = _run(args.backend, Path(tmp), args.kills, seed)
    except AssertionError as error:
        print(f"soak FAILED (backend {args.backend}, seed {seed}): {error}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    summary = " ".join(f"{name}={value}" for name, value in counts.items())
    print(f"soak ok: backend={args.backend} seed={seed} {summary} seconds={elapsed:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
