"""The crash-safety loop of tests/test_crash.py, run for longer (``make soak``).

    python -m tests.soak --kills 200 [--seed N] [--data-dir DIR]

Prints one summary line with the counts and exits 0, or exits 1 with the
first inconsistency found (and the seed that reproduces the run).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from tests.test_crash import run_crash_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--kills", type=int, default=200, help="how many SIGKILLs (200)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep the data here instead of in a temporary directory",
    )
    args = parser.parse_args(argv)
    if args.kills < 1:
        parser.error("--kills must be at least 1")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    started = time.monotonic()
    try:
        if args.data_dir is not None:
            counts = run_crash_loop(args.data_dir, args.kills, seed)
        else:
            with tempfile.TemporaryDirectory(prefix="turnstore-soak-") as tmp:
                counts = run_crash_loop(Path(tmp), args.kills, seed)
    except AssertionError as error:
        print(f"soak FAILED (seed {seed}): {error}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    summary = " ".join(f"{name}={value}" for name, value in counts.items())
    print(f"soak ok: seed={seed} {summary} seconds={elapsed:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
