"""The load-generator process: ``python -m bench.client SCENARIO --params JSON``.

The orchestrator (``bench.run``) spawns one such process per scenario, so
the load runs outside the server's process and outside the orchestrator
(which only samples memory). The scenario's keyword arguments come as a
JSON object; its result is printed as one JSON line on stdout. Anything
else (errors, tracebacks) goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from bench import (
    floors,
    lmdb_load,
    redis_load,
    sse_load,
    traits_redis,
    traits_rust,
    traits_sqlite,
    traits_turnstore,
    turnstore_load,
)
from bench.common import Result

RUNNERS: dict[str, Callable[[str, dict[str, Any]], Result]] = {
    **dict.fromkeys(turnstore_load.SCENARIOS, turnstore_load.run),
    **dict.fromkeys(redis_load.SCENARIOS, redis_load.run),
    **dict.fromkeys(lmdb_load.SCENARIOS, lmdb_load.run),
    **dict.fromkeys(traits_turnstore.SCENARIOS, traits_turnstore.run),
    **dict.fromkeys(traits_redis.SCENARIOS, traits_redis.run),
    **dict.fromkeys(traits_sqlite.SCENARIOS, traits_sqlite.run),
    **dict.fromkeys(sse_load.SCENARIOS, sse_load.run),
    **dict.fromkeys(floors.SCENARIOS, floors.run),
    **dict.fromkeys(traits_rust.SCENARIOS, traits_rust.run),
}


def main(argv: list[str] | None = None) -> int:
    """Run one scenario and print its result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__)
    parser.add_argument("scenario", choices=sorted(RUNNERS))
    parser.add_argument("--params", default="{}", help="the scenario's arguments, a JSON object")
    args = parser.parse_args(argv)
    result = RUNNERS[args.scenario](args.scenario, json.loads(args.params))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
