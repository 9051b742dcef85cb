"""One conformance run across languages: tests/conformance/scenario.json, through every client.

The scenario is data (steps: an operation, its arguments, the expected outcome);
each client has a small driver that executes the steps through its public API
and prints one JSON outcome per step (tests/conformance/README.md). The run
starts ONE real daemon (on each backend in turn), gives every driver in
DRIVERS the scenario with thread ids and keys of its own, and fails when any
driver's outcome differs from the scenario's expectation (or, for a step
without one, from the first driver's), naming the language, the step, what
was expected and what came back.

A fourth language joins by adding its driver program and one row to DRIVERS.
The runner itself is shown to fail when one client differs (the last tests).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import daemon as daemon_module
from tests.daemon import Daemon
from tests.test_rust import CARGO_TIMEOUT, _cargo, _target_dir
from tests.test_typescript import TS_DIR, _run

CONFORMANCE_DIR = Path(__file__).resolve().parent / "conformance"
SCENARIO = CONFORMANCE_DIR / "scenario.json"
DRIVER_TIMEOUT = 120.0


@dataclass(frozen=True)
class Driver:
    """A client's driver: ``prepare()`` builds it if needed and returns its command,
    to which the runner appends STEPS_FILE and TARGET.

    ``env`` is added to the driver's environment. ``known_gaps`` are operations the client does not offer yet: its driver
    must answer them ``{"unsupported": op}`` (anything else fails the run, so
    the entry goes once the client has the operation).
    """

    language: str
    prepare: Callable[[], list[str]]
    known_gaps: frozenset[str] = frozenset()
    env: Mapping[str, str] = field(default_factory=dict)


def _python_driver() -> list[str]:
    return [sys.executable, str(CONFORMANCE_DIR / "python_driver.py")]


@functools.cache
def _typescript_driver() -> list[str]:
    """client/typescript installed (npm ci, once) and built; its test/conformance-driver.ts."""
    with tempfile.TemporaryDirectory(prefix="turnstore-npm-cache-") as cache:
        env = {**os.environ, "npm_config_cache": cache, "npm_config_update_notifier": "false"}
        installed = TS_DIR / "node_modules" / ".package-lock.json"
        lock = TS_DIR / "package-lock.json"
        if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
            _run(["npm", "ci", "--no-audit", "--no-fund"], env, timeout=180)
        _run(["npm", "run", "build"], env, timeout=120)
    return ["node", str(TS_DIR / "dist" / "test" / "conformance-driver.js")]


@functools.cache
def _rust_driver() -> list[str]:
    """The Rust crate's `conformance` example, built into the shared target directory."""
    _cargo(["build", "--locked", "--quiet", "--example", "conformance"])
    return [str(_target_dir() / "debug" / "examples" / "conformance")]


UNARY_WRITES = {"TURNSTORE_WRITE_MODE": "unary"}

# Every client's driver. A new language: its driver program, and a row here. The
# clients that can write with unary calls instead of their shared append stream
# run the scenario both ways.
DRIVERS = [
    Driver("python", _python_driver),
    Driver("python-unary", _python_driver, env=UNARY_WRITES),
    Driver("typescript", _typescript_driver),
    Driver("typescript-unary", _typescript_driver, env=UNARY_WRITES),
    Driver("rust", _rust_driver),
]


@dataclass(frozen=True)
class Mismatch:
    """A driver's outcome that differs from what was expected of it."""

    language: str
    step: int
    op: str
    note: str
    expected: Any
    actual: Any

    def __str__(self) -> str:
        return (
            f"{self.language}: step {self.step} ({self.op}{': ' + self.note if self.note else ''})"
            f"\n  expected: {json.dumps(self.expected, ensure_ascii=False)}"
            f"\n  actual:   {json.dumps(self.actual, ensure_ascii=False)}"
        )


def _expand(value: Any, scenario: dict[str, Any]) -> Any:
    """``value`` with every ``{"$event": name}`` / ``{"$snapshot": name}`` written out."""
    if isinstance(value, dict):
        if len(value) == 1 and "$event" in value:
            return copy.deepcopy(scenario["events"][value["$event"]])
        if len(value) == 1 and "$snapshot" in value:
            return copy.deepcopy(scenario["snapshots"][value["$snapshot"]])
        return {key: _expand(item, scenario) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand(item, scenario) for item in value]
    return value


# The arguments that name a thread or key (or a range of keys): "$name" becomes prefix + name.
NAMED_ARGUMENTS = ("thread", "key", "prefix", "start_after", "end_before")


def _rename(arguments: dict[str, Any], prefix: str) -> None:
    for argument in NAMED_ARGUMENTS:
        name = arguments.get(argument)
        if isinstance(name, str) and name.startswith("$"):
            arguments[argument] = prefix + name[1:]


def render(scenario: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """The steps as a driver gets them: names written out, ``$name`` thread ids, keys
    and key ranges (in a batch's operations too) made ``prefix + name``, expectations
    and notes left out."""
    steps = []
    for step in scenario["steps"]:
        rendered = {
            key: _expand(value, scenario)
            for key, value in step.items()
            if key not in ("expect", "note")
        }
        _rename(rendered, prefix)
        for operation in rendered.get("operations", []):
            for arguments in operation.values():
                _rename(arguments, prefix)
        steps.append(rendered)
    return steps


def run_driver(
    driver: Driver, command: list[str], scenario: dict[str, Any], target: str, workdir: Path
) -> list[Any]:
    """The driver's outcome of every step (None for a step it gave none for).

    Raises AssertionError naming the language when the driver fails to run.
    """
    prefix = f"{driver.language}-{uuid.uuid4().hex[:12]}-"
    steps_file = workdir / f"{driver.language}-steps.json"
    steps_file.write_text(json.dumps(render(scenario, prefix), ensure_ascii=False))
    try:
        result = subprocess.run(
            [*command, str(steps_file), target],
            env={**os.environ, **driver.env},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DRIVER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise AssertionError(
            f"{driver.language}: the driver took over {DRIVER_TIMEOUT} s:\n{error.stderr!s}"
        ) from None
    outcomes: list[Any] = [None] * len(scenario["steps"])
    for line in result.stdout.splitlines():
        try:
            message = json.loads(line)
            outcomes[message["step"]] = message["outcome"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise AssertionError(
                f"{driver.language}: the driver printed {line!r}, not an outcome line"
            ) from None
    if result.returncode != 0:
        raise AssertionError(
            f"{driver.language}: the driver exited with {result.returncode}:\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return outcomes


def compare(
    scenario: dict[str, Any], drivers: list[Driver], outcomes: dict[str, list[Any]]
) -> list[Mismatch]:
    """Each driver's first mismatch: with the step's expectation, or for a step
    without one, with the first driver that answered it."""
    first: dict[str, Mismatch] = {}
    for index, step in enumerate(scenario["steps"]):
        reference: tuple[str, Any] | None = None
        if "expect" in step:
            reference = ("the scenario", _expand(step["expect"], scenario))
        for driver in drivers:
            if driver.language in first:
                continue
            actual = outcomes[driver.language][index]
            op, note = step["op"], step.get("note", "")
            if op in driver.known_gaps:
                expected: Any = {"unsupported": op}
                if actual != expected:
                    first[driver.language] = Mismatch(
                        driver.language,
                        index,
                        op,
                        f"listed in known_gaps; {note}",
                        expected,
                        actual,
                    )
                continue
            if reference is None:
                reference = (driver.language, actual)
                continue
            if actual != reference[1]:
                source = "" if reference[0] == "the scenario" else f"as {reference[0]} gave; "
                first[driver.language] = Mismatch(
                    driver.language, index, op, source + note, reference[1], actual
                )
    return [first[d.language] for d in drivers if d.language in first]


def run_conformance(
    scenario: dict[str, Any], drivers: list[Driver], target: str, workdir: Path
) -> list[Mismatch]:
    """Run every driver against the daemon at ``target``; their first mismatches."""
    outcomes = {
        driver.language: run_driver(driver, driver.prepare(), scenario, target, workdir)
        for driver in drivers
    }
    return compare(scenario, drivers, outcomes)


def _scenario() -> dict[str, Any]:
    scenario: dict[str, Any] = json.loads(SCENARIO.read_text(encoding="utf-8"))
    return scenario


@pytest.fixture(scope="module")
def daemon_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The daemon the tests of the runner itself share."""
    daemon = Daemon(tmp_path_factory.mktemp("cross-language") / "data")
    daemon.start()
    # Shared by the module's tests: not one for conftest's _reap_daemons to kill.
    assert daemon.process is not None
    daemon_module.LIVE.discard(daemon.process)
    try:
        yield daemon.target
    finally:
        assert daemon.stop() == 0, daemon.log_lines


@pytest.mark.timeout(CARGO_TIMEOUT + 300)
def test_every_client_gives_the_scenarios_outcomes(backend_args: list[str], tmp_path: Path) -> None:
    """ONE daemon (on each backend in turn), every driver against it."""
    daemon = Daemon(tmp_path / "data", extra_args=backend_args)
    daemon.start()
    try:
        mismatches = run_conformance(_scenario(), DRIVERS, daemon.target, tmp_path)
    finally:
        assert daemon.stop() == 0, daemon.log_lines
    assert not mismatches, "\n".join(str(m) for m in mismatches)


# The runner itself: it fails, naming the language and the step, when one client differs.

PYTHON = DRIVERS[0]

# A driver whose outcome of one step differs: the Python driver's output with the
# `count` of step argv[2] made one more (argv[1]: the Python driver; then STEPS_FILE TARGET).
OFF_BY_ONE = """
import json, subprocess, sys
driver, step, rest = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
output = subprocess.run([sys.executable, driver, *rest], capture_output=True, text=True, check=True)
for line in output.stdout.splitlines():
    message = json.loads(line)
    if message["step"] == step:
        message["outcome"]["count"] += 1
    print(json.dumps(message))
"""


def _step_index(scenario: dict[str, Any], op: str, expect: dict[str, Any]) -> int:
    return next(
        i
        for i, step in enumerate(scenario["steps"])
        if (step["op"], step["expect"]) == (op, expect)
    )


def test_an_expectation_no_client_meets_fails_the_run_naming_language_and_step(
    daemon_target: str, tmp_path: Path
) -> None:
    scenario = _scenario()
    refused = _step_index(scenario, "append", {"error": "event_id_conflict"})
    scenario["steps"][refused]["expect"] = {"error": "turn_finished"}
    mismatches = run_conformance(scenario, [PYTHON], daemon_target, tmp_path)
    assert mismatches == [
        Mismatch(
            "python",
            refused,
            "append",
            scenario["steps"][refused]["note"],
            {"error": "turn_finished"},
            {"error": "event_id_conflict"},
        )
    ]
    assert str(mismatches[0]).startswith(f"python: step {refused} (append: ")


def test_a_client_that_differs_from_the_others_fails_the_run(
    daemon_target: str, tmp_path: Path
) -> None:
    """The altered driver is named, at the altered step: once where the scenario
    has an expectation, once where only the first driver's outcome is the reference."""
    scenario = _scenario()
    counted = _step_index(scenario, "event_count", {"count": 3})
    altered = Driver(
        "altered",
        lambda: [
            sys.executable,
            "-c",
            OFF_BY_ONE,
            str(CONFORMANCE_DIR / "python_driver.py"),
            str(counted),
        ],
    )
    mismatches = run_conformance(scenario, [PYTHON, altered], daemon_target, tmp_path)
    assert [(m.language, m.step, m.expected, m.actual) for m in mismatches] == [
        ("altered", counted, {"count": 3}, {"count": 4})
    ]
    del scenario["steps"][counted]["expect"]
    mismatches = run_conformance(scenario, [PYTHON, altered], daemon_target, tmp_path)
    assert [(m.language, m.step, m.note, m.actual) for m in mismatches] == [
        ("altered", counted, "as python gave; ", {"count": 4})
    ]


def test_a_known_gap_the_client_does_fill_fails_the_run(daemon_target: str, tmp_path: Path) -> None:
    """An operation listed as missing from a client must be missing: once the
    client has it, the run says to take it off the list."""
    scenario = _scenario()
    listed = Driver("python", _python_driver, known_gaps=frozenset({"event_count"}))
    first = next(i for i, step in enumerate(scenario["steps"]) if step["op"] == "event_count")
    mismatches = run_conformance(scenario, [listed], daemon_target, tmp_path)
    assert [(m.language, m.step, m.expected) for m in mismatches] == [
        ("python", first, {"unsupported": "event_count"})
    ]
    assert "listed in known_gaps" in str(mismatches[0])


def test_a_driver_that_fails_to_run_fails_the_run_naming_its_language(
    daemon_target: str, tmp_path: Path
) -> None:
    broken = Driver("broken", lambda: [sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(AssertionError, match=r"^broken: the driver exited with 3"):
        run_conformance(_scenario(), [broken], daemon_target, tmp_path)
