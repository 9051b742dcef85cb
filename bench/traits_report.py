"""The user-facing ("trait") table: its ratios, its targets and its printed form.

Each metric is one row with a value per side (turnstore with stream writes,
turnstore with unary writes, Redis Streams, SQLite) and the ratios of
turnstore to Redis and to SQLite. The targets use the client's default
write mode, ``stream``; the unary ratio is printed beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from bench.common import Result
from bench.profiles import Profile

KIB: Final = 1024
MB: Final = 1_000_000
TURNSTORE_SIDES: Final = ("stream", "unary")
BASELINES: Final = ("redis", "sqlite")
_BASELINE_NAMES: Final = {"redis": "Redis", "sqlite": "SQLite"}


def _get(tree: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


@dataclass(frozen=True)
class Metric:
    """One row: where each side's value is, whether lower is better, and its targets.

    ``row`` names the results (``trait_<row>_<side>``); a metric with
    ``per_mode`` has one result per write mode, otherwise one ``turnstore``
    result fills the stream column. ``targets`` maps a baseline to the
    ratio turnstore / baseline must reach (at most, for latencies). With
    ``difference``, turnstore is compared by turnstore - baseline instead
    (in the row's unit), for latencies that can be zero or negative (a
    follower woken together with the writer's acknowledgement).
    """

    key: str
    label: str
    row: str
    path: tuple[str, ...]
    lower_is_better: bool
    per_mode: bool
    unit: str
    targets: tuple[tuple[str, float], ...] = ()
    difference: bool = False


def metrics(profile: Profile) -> list[Metric]:
    """The table's rows, in order."""
    n = f"{profile.trait_read_events:,}"
    rows = [
        Metric("append_p50", "one agent: await append, p50", "agent", ("append", "p50_ms"),
               True, True, "ms", (("redis", 1.5),)),
        Metric("append_p99", "one agent: await append, p99", "agent", ("append", "p99_ms"),
               True, True, "ms", (("redis", 2.0),)),
        Metric("finish_p50", "one agent: await finish_turn, p50", "agent", ("finish", "p50_ms"),
               True, True, "ms"),
    ]  # fmt: skip
    for c in profile.trait_concurrencies:
        rows.append(
            Metric(
                f"agents_{c}",
                f"{c} agent{'s' if c > 1 else ''} at once, each awaiting its appends",
                "agents",
                ("by_concurrency", str(c), "rate_per_s"),
                False,
                True,
                "ev/s",
                (("redis", 1.5),) if c == 64 else (),
            )
        )
    rows += [
        Metric("get_events", f"get_events of {n} events, every event dict built", "get_events",
               ("rate_per_s",), False, False, "ev/s", (("redis", 1.5), ("sqlite", 1.0))),
        Metric("replay", f"replay of {n} events, every .envelope read", "replay",
               ("rate_per_s",), False, False, "ev/s", (("redis", 1.5), ("sqlite", 1.0))),
        Metric("follow_p50", "live follow: append ack -> follower, p50", "follow",
               ("ack_to_follower", "p50_ms"), True, True, "ms", difference=True),
        Metric("follow_p99", "live follow: append ack -> follower, p99", "follow",
               ("ack_to_follower", "p99_ms"), True, True, "ms", (("redis", 0.0),),
               difference=True),
        Metric("follow_send_p99", "live follow: append sent -> follower, p99", "follow",
               ("send_to_follower", "p99_ms"), True, True, "ms"),
    ]  # fmt: skip
    return rows


def _value(results: Result, metric: Metric, side: str) -> float | None:
    if side in TURNSTORE_SIDES and not metric.per_mode:
        side = "turnstore" if side == "stream" else ""
    value = _get(results, f"trait_{metric.row}_{side}", *metric.path)
    return value if isinstance(value, int | float) else None


def _compare(metric: Metric, mine: float | None, base: float | None) -> float | None:
    """turnstore / baseline, or turnstore - baseline for a ``difference`` metric."""
    if not metric.difference:
        return _ratio(mine, base)
    return None if mine is None or base is None else mine - base


def evaluate_traits(results: Result, profile: Profile) -> tuple[Result, list[Result]]:
    """Each metric's values and comparisons, and the targets (``pass`` True/False/None).

    Comparisons are keyed ``<mode>_vs_<baseline>``: ratios, or differences
    for a ``difference`` metric. A side that did not run compares as None.
    """
    derived: Result = {}
    targets: list[Result] = []
    for metric in metrics(profile):
        values = {side: _value(results, metric, side) for side in (*TURNSTORE_SIDES, *BASELINES)}
        versus = {
            f"{mode}_vs_{base}": _compare(metric, values[mode], values[base])
            for mode in TURNSTORE_SIDES
            for base in BASELINES
        }
        derived[metric.key] = {
            "unit": metric.unit,
            "values": values,
            "compared_by": "difference" if metric.difference else "ratio",
            "versus": versus,
        }
        for base, threshold in metric.targets:
            measured = versus[f"stream_vs_{base}"]
            op = "<=" if metric.lower_is_better else ">="
            if measured is None:
                passed = None
            else:
                passed = measured <= threshold if op == "<=" else measured >= threshold
            targets.append(
                {
                    "name": f"{metric.label}: turnstore {'-' if metric.difference else '/'} "
                    f"{_BASELINE_NAMES[base]}",
                    "measured": measured,
                    "op": op,
                    "threshold": threshold,
                    "unit": metric.unit if metric.difference else "x",
                    "pass": passed,
                }
            )
    derived["memory"] = _memory(results)
    return derived, targets


def _memory(results: Result) -> Result:
    """The servers' memory (MB) at the end of the table and at its peak."""

    def mb(kib: Any) -> float | None:
        return None if kib is None else kib * KIB / MB

    memory: Result = {}
    for server, end_key in (("daemon", "daemon_end_kib"), ("redis", "redis_end_kib")):
        peaks: dict[str, float] = {}
        for name, result in results.items():
            if name.startswith("trait_"):
                for field, kib in (_get(result, "memory", server, "peak_kib") or {}).items():
                    peaks[field] = max(peaks.get(field, 0), kib)
        memory[server] = {
            field: {
                "end_mb": mb(_get(results, "trait_memory", end_key, field)),
                "peak_mb": mb(peaks.get(field)),
            }
            for field in ("RssAnon", "VmRSS")
        }
    memory["daemon"]["start_anon_mb"] = mb(
        _get(results, "trait_memory", "daemon_start_kib", "RssAnon")
    )
    return memory


# ---------------------------------------------------------------- rendering


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.2f}" if unit == "ms" else f"{value:,.0f}"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _versus(metric: Metric, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f} {metric.unit}" if metric.difference else _x(value)


def _versus_cell(metric: Metric, versus: Result, base: str) -> str:
    stream, unary = versus[f"stream_vs_{base}"], versus[f"unary_vs_{base}"]
    if stream is None and unary is None:
        return "-"
    if unary is None or not metric.per_mode:
        return _versus(metric, stream)
    return f"{_versus(metric, stream)} (u {_versus(metric, unary)})"


def _target_cell(metric: Metric) -> str:
    op = "<=" if metric.lower_is_better else ">="
    if metric.difference:
        return ", ".join(
            f"{op} {_BASELINE_NAMES[base]} {value:+.1f} {metric.unit}"
            for base, value in metric.targets
        )
    return ", ".join(f"{op} {value}x {_BASELINE_NAMES[base]}" for base, value in metric.targets)


def _errors(results: Result) -> list[str]:
    """A line per trait step that failed, read short, or followed short."""
    lines = []
    for name, result in results.items():
        if not name.startswith("trait_"):
            continue
        if "error" in result:
            lines.append(f"ERROR {name}: {str(result['error']).strip().splitlines()[-1][:100]}")
        elif result.get("complete") is False:
            lines.append(
                f"INCOMPLETE {name}: a read saw other than {result.get('expected')} events"
            )
        elif result.get("received", result.get("events")) != result.get("events"):
            lines.append(f"INCOMPLETE {name}: {result['received']} of {result['events']} followed")
    return lines


def grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows under a header: the first and last columns left-aligned, the rest right."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [
            cell.ljust(width) if i in (0, len(row) - 1) else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def render_traits(results: Result, derived: Result, profile: Profile, redis: str | None) -> str:
    """The table that opens the report."""
    fallback = bool(_get(results, "trait_agent_stream", "write_mode_fallback"))
    mark = "*" if fallback else ""
    header = (
        "what an agent or a UI does",
        f"turnstore stream{mark}",
        "turnstore unary",
        "Redis Streams",
        "SQLite",
        "vs Redis",
        "vs SQLite",
        "target (stream)",
    )
    rows: list[tuple[str, ...]] = []
    for metric in metrics(profile):
        entry = derived[metric.key]
        values = entry["values"]
        unary = _num(values["unary"], metric.unit) if metric.per_mode else "(same)"
        rows.append(
            (
                f"{metric.label} ({metric.unit})",
                _num(values["stream"], metric.unit),
                unary,
                _num(values["redis"], metric.unit),
                _num(values["sqlite"], metric.unit),
                _versus_cell(metric, entry["versus"], "redis"),
                _versus_cell(metric, entry["versus"], "sqlite"),
                _target_cell(metric),
            )
        )
    memory = derived["memory"]
    for field, what in (("RssAnon", "anonymous"), ("VmRSS", "resident")):
        daemon, server = memory["daemon"][field], memory["redis"][field]
        rows.append(
            (
                f"server memory, {what}: end (peak) (MB)",
                f"{_mb(daemon['end_mb'])} ({_mb(daemon['peak_mb'])})",
                "(same daemon)",
                f"{_mb(server['end_mb'])} ({_mb(server['peak_mb'])})",
                "in-process",
                "",
                "",
                "",
            )
        )
    lines = [
        "What agents and UIs see: every call awaited, every event decoded with orjson; "
        f"200-byte text deltas. Redis: {redis or 'not run'} (appendfsync always, redis-py "
        "asyncio + hiredis); SQLite: in-process, WAL, synchronous=FULL, commit per append",
        *grid(header, rows),
        "  vs: turnstore / baseline (ms rows of the live follower: turnstore - baseline); "
        "u = with unary writes; the targets use stream writes",
    ]
    if fallback:
        lines.append(
            "  * this client has no write_mode option yet: the stream column ran unary calls"
        )
    lines += [f"  {line}" for line in _errors(results)]
    return "\n".join(lines) + "\n"
