"""The floors of the append path beside the user rows: their values, ratios and table.

Each user row of the append path (one agent's append and finish latencies,
N agents' rate) is paired with the floor the same design cannot go below:
the bare grpc.aio bidi round trip plus one synced LMDB commit on a writer
thread (``floor_bidi_thread``), what the daemon does today, at the same
number of streams in flight. It is printed for the Python client (stream
writes, the table's ``stream`` side) and for the Rust client
(``trait_rust``), each as value / floor: for latencies the times the floor
it takes, for rates the share of the floor's rate it reaches. The other
floors (``bench.floors``) are printed above, to read where the floor's own
time goes (the round trip, the two syncs of a commit, a bare sync).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from bench.common import Result
from bench.profiles import Profile

FLOOR_ERRORS_PREFIX: Final = "floor_"
# The floor each user row is paired with, at one stream in flight.
PAIRED_FLOOR: Final = "bidi_thread"


@dataclass(frozen=True)
class Floor:
    """One floor: a result (``floor_*``) and where in it its latencies and rate are.

    ``short`` names it in the pairing table (None: as ``label``).
    """

    key: str
    label: str
    result: str
    path: tuple[str, ...]
    short: str | None = None


@dataclass(frozen=True)
class Pairing:
    """A user row and its floor: the Python and Rust values' paths, the floor's and its stat."""

    key: str
    label: str
    unit: str
    python: tuple[str, ...]
    rust: tuple[str, ...]
    floor: str
    stat: str


def floors(profile: Profile) -> list[Floor]:
    """The floors, in the table's order."""
    one = ("by_concurrency", "1")
    rows = [
        Floor("bidi", "bare grpc.aio bidi round trip, Python to Python, Unix socket",
              "floor_bidi_bare", one),
        Floor("bidi_inline", "the same, the handler doing one synced LMDB commit inline",
              "floor_bidi_inline", one),
        Floor("bidi_thread", "the same, the commit on a writer thread, result via "
              "call_soon_threadsafe", "floor_bidi_thread", one,
              "bidi + synced commit on a writer thread"),
    ]  # fmt: skip
    for count in profile.trait_concurrencies:
        if count > 1:
            rows.append(
                Floor(
                    f"bidi_thread_{count}",
                    f"the same, {count} streams at once (one commit per writer wake-up)",
                    "floor_bidi_thread",
                    ("by_concurrency", str(count)),
                    f"bidi + synced commit on a writer thread, {count} streams",
                )
            )
    rows += [
        Floor("lmdb_sync", "LMDB synced commit alone (data sync, then meta sync)",
              "floor_disk", ("lmdb_sync",)),
        Floor("lmdb_nometasync", "LMDB commit with metasync=False (data synced, meta not)",
              "floor_disk", ("lmdb_nometasync",)),
        Floor("pwrite_fdatasync", "pwrite + fdatasync into a preallocated file",
              "floor_disk", ("pwrite_fdatasync",)),
        Floor("append_fdatasync", "write + fdatasync appending to a file",
              "floor_disk", ("append_fdatasync",)),
    ]  # fmt: skip
    return rows


def _thread_floor(count: int) -> str:
    return PAIRED_FLOOR if count == 1 else f"{PAIRED_FLOOR}_{count}"


def pairings(profile: Profile) -> list[Pairing]:
    """The user rows of the append path and their floors, in the table's order."""
    rows = [
        Pairing("append_p50", "one agent: await append, p50", "ms",
                ("trait_agent_stream", "append", "p50_ms"),
                ("trait_rust", "agent", "append", "p50_ms"), PAIRED_FLOOR, "p50_ms"),
        Pairing("append_p99", "one agent: await append, p99", "ms",
                ("trait_agent_stream", "append", "p99_ms"),
                ("trait_rust", "agent", "append", "p99_ms"), PAIRED_FLOOR, "p99_ms"),
        Pairing("finish_p50", "one agent: await finish_turn, p50", "ms",
                ("trait_agent_stream", "finish", "p50_ms"),
                ("trait_rust", "agent", "finish", "p50_ms"), PAIRED_FLOOR, "p50_ms"),
    ]  # fmt: skip
    for count in profile.trait_concurrencies:
        at = ("by_concurrency", str(count), "rate_per_s")
        rows.append(
            Pairing(
                f"agents_{count}",
                f"{count} agent{'s' if count > 1 else ''} at once, each awaiting its appends",
                "ev/s",
                ("trait_agents_stream", *at),
                ("trait_rust", *at),
                _thread_floor(count),
                "rate_per_s",
            )
        )
    return rows


def _get(tree: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if not numerator or not denominator else numerator / denominator


def evaluate_floors(results: Result, profile: Profile) -> Result:
    """Each floor's p50, p99 (ms) and rate; each user row's values and ratios to its floor.

    A floor or a side that did not run (or failed) is None, and so is every
    ratio drawn from it.
    """
    measured: Result = {}
    for floor in floors(profile):
        at = _get(results, floor.result, *floor.path)
        measured[floor.key] = {
            "label": floor.label,
            **{stat: _number(_get(at, stat)) for stat in ("p50_ms", "p99_ms", "rate_per_s")},
        }
    paired: Result = {}
    for pairing in pairings(profile):
        python = _number(_get(results, *pairing.python))
        rust = _number(_get(results, *pairing.rust))
        floor = _get(measured, pairing.floor, pairing.stat)
        paired[pairing.key] = {
            "label": pairing.label,
            "unit": pairing.unit,
            "python": python,
            "rust": rust,
            "floor": pairing.floor,
            "floor_stat": pairing.stat,
            "floor_value": floor,
            "python_vs_floor": _ratio(python, floor),
            "rust_vs_floor": _ratio(rust, floor),
        }
    return {"floors": measured, "pairs": paired}


# ---------------------------------------------------------------- rendering


def _us(ms: float | None) -> str:
    return "-" if ms is None else f"{ms * 1000:,.0f}"


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.3f}" if unit == "ms" else f"{value:,.0f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]], text: int = 0) -> list[str]:
    """Rows under a header: the first column (and the last ``text`` ones) left-aligned, the
    rest right."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return [
        "  "
        + "  ".join(
            cell.ljust(width) if i == 0 or i >= len(row) - text else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in (header, *rows)
    ]


def render_floors(results: Result, derived: Result, profile: Profile) -> list[str]:
    """The floors, then the append path's user rows as ratios to their floors."""
    measured, paired = derived["floors"], derived["pairs"]
    floor_rows = [
        (
            floor.label,
            _us(measured[floor.key]["p50_ms"]),
            _us(measured[floor.key]["p99_ms"]),
            _value(measured[floor.key]["rate_per_s"], "ops/s"),
        )
        for floor in floors(profile)
    ]
    labels = {floor.key: floor.short or floor.label for floor in floors(profile)}
    pair_rows = []
    for pairing in pairings(profile):
        entry = paired[pairing.key]
        stat = {"p50_ms": "p50", "p99_ms": "p99", "rate_per_s": "ops/s"}[pairing.stat]
        floor_value = entry["floor_value"]
        pair_rows.append(
            (
                f"{pairing.label} ({pairing.unit})",
                _value(entry["python"], pairing.unit),
                _value(entry["rust"], pairing.unit),
                _value(floor_value, pairing.unit),
                _x(entry["python_vs_floor"]),
                _x(entry["rust_vs_floor"]),
                f"{labels[pairing.floor]}, {stat}",
            )
        )
    rust_ran = "error" not in (results.get("trait_rust") or {"error": "not run"})
    lines = [
        "The append path against its floors, measured in this run: the pieces the daemon is "
        "built from, 300-byte messages, files in the run's work directory",
        *_grid(("floor", "p50 (us)", "p99 (us)", "ops/s"), floor_rows),
        "",
        *_grid(
            (
                "user row (turnstore on LMDB)",
                "Python (stream)",
                "Rust",
                "floor",
                "Python / floor",
                "Rust / floor",
                "its floor",
            ),
            pair_rows,
            text=1,
        ),
        "  Python: the table's turnstore stream side; Rust: client/rust's EventStore "
        "(examples/bench_append.rs, release build, one client, Tokio tasks)"
        + ("" if rust_ran else " - not run"),
        "  latencies / floor: times the floor's time; rates / floor: share of the floor's rate",
    ]
    for name, result in results.items():
        if name.startswith(FLOOR_ERRORS_PREFIX) and "error" in result:
            lines.append(f"  ERROR {name}: {str(result['error']).strip().splitlines()[-1][:100]}")
    return lines
