"""The load-generator process: ``python -m bench.client SCENARIO --params JSON``.

The orchestrator (``bench.run``) spawns one such process per scenario, so
the load runs outside the server's process and outside the orchestrator
(which only samples memory). The scenario's keyword arguments come as a
JSON object; its result is printed as one JSON line on stdout. Anything
else (errors, tracebacks) goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from typing import Any

from bench.common import Result

# The scenario modules, each with SCENARIOS and run(). Imported one by one
# when a scenario is looked up, so that a process measuring turnstore or a
# floor needs neither Redis's client nor any other baseline's library.
MODULES = (
    "turnstore_load",
    "redis_load",
    "lmdb_load",
    "traits_turnstore",
    "traits_redis",
    "traits_sqlite",
    "sse_load",
    "floors",
    "traits_rust",
)


def runner_of(scenario: str) -> Callable[[str, dict[str, Any]], Result]:
    """The run() of the module that has ``scenario``; SystemExit naming it when none has."""
    unavailable: list[str] = []
    for name in MODULES:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ImportError as error:
            unavailable.append(f"bench.{name} ({error})")
            continue
        if scenario in module.SCENARIOS:
            run: Callable[[str, dict[str, Any]], Result] = module.run
            return run
    hint = f"; not importable: {', '.join(unavailable)}" if unavailable else ""
    raise SystemExit(f"unknown scenario {scenario!r}{hint}")


def main(argv: list[str] | None = None) -> int:
    """Run one scenario and print its result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__)
    parser.add_argument("scenario", help="a name from one of the modules' SCENARIOS")
    parser.add_argument("--params", default="{}", help="the scenario's arguments, a JSON object")
    args = parser.parse_args(argv)
    result = runner_of(args.scenario)(args.scenario, json.loads(args.params))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
