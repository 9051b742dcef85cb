"""The user-facing ("trait") table: its ratios, its targets and its printed form.

Each metric is one row with a value per side (turnstore with stream writes,
turnstore with unary writes, Redis Streams, SQLite) and the ratios of
turnstore to Redis and to SQLite. The targets use the client's default
write mode, ``stream``; the unary ratio is printed beside it.

turnstore on PostgreSQL (side ``pg``, stream writes) gets a table of its
own under it: the same metrics compared with turnstore on LMDB, Redis and
SQLite, then the rows of two daemons sharing its database (:class:`FleetMetric`),
also compared with the one PostgreSQL daemon. It has no targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from bench.common import Result
from bench.floors_report import evaluate_floors, render_floors
from bench.profiles import Profile

KIB: Final = 1024
MB: Final = 1_000_000
TURNSTORE_SIDES: Final = ("stream", "unary")
BASELINES: Final = ("redis", "sqlite")
_BASELINE_NAMES: Final = {"redis": "Redis", "sqlite": "SQLite"}
POSTGRES: Final = "pg"
# What turnstore on PostgreSQL is compared with: one PostgreSQL daemon (the
# rows of two daemons only), turnstore on LMDB with stream writes, Redis, SQLite.
PG_BASELINES: Final = ("one_daemon", "lmdb", "redis", "sqlite")


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


@dataclass(frozen=True)
class FleetMetric:
    """A row of two daemons sharing one PostgreSQL database, beside the row it extends.

    Its value is ``trait_<row>_pg`` at ``path``; its unit and direction are
    those of the metric keyed ``like``, whose values (the one PostgreSQL
    daemon's, LMDB's, Redis's, SQLite's) it is compared with.
    """

    key: str
    label: str
    row: str
    path: tuple[str, ...]
    like: str


def fleet_metrics(profile: Profile) -> list[FleetMetric]:
    """The rows of two daemons on one database, in order."""
    most = max(profile.trait_concurrencies)
    across = "live follow, writer on daemon A, follower on daemon B"
    return [
        FleetMetric(f"agents_{most}_two_daemons",
                    f"{most} agents over two daemons ({most // 2} on each), total",
                    "agents_split", ("by_concurrency", str(most), "rate_per_s"), f"agents_{most}"),
        FleetMetric("follow_across_p50", f"{across}: ack -> follower, p50", "follow_across",
                    ("ack_to_follower", "p50_ms"), "follow_p50"),
        FleetMetric("follow_across_p99", f"{across}: ack -> follower, p99", "follow_across",
                    ("ack_to_follower", "p99_ms"), "follow_p99"),
        FleetMetric("follow_across_send_p99", f"{across}: sent -> follower, p99",
                    "follow_across", ("send_to_follower", "p99_ms"), "follow_send_p99"),
    ]  # fmt: skip


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) else None


def _value(results: Result, metric: Metric, side: str) -> float | None:
    if side in TURNSTORE_SIDES and not metric.per_mode:
        side = "turnstore" if side == "stream" else ""
    return _number(_get(results, f"trait_{metric.row}_{side}", *metric.path))


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
        sides = (*TURNSTORE_SIDES, POSTGRES, *BASELINES)
        values = {side: _value(results, metric, side) for side in sides}
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
    derived["postgres"] = _postgres(results, derived, profile)
    derived["floors"] = evaluate_floors(results, profile)
    return derived, targets


def _postgres(results: Result, derived: Result, profile: Profile) -> Result:
    """turnstore on PostgreSQL against each of :data:`PG_BASELINES`, keyed by metric.

    ``versus`` holds ratios (differences for a ``difference`` metric), None
    where a side did not run; ``one_daemon`` is filled for the rows of two
    daemons only.
    """
    by_key = {metric.key: metric for metric in metrics(profile)}
    table: Result = {}

    def entry(metric: Metric, value: float | None, like: Result, one_daemon: bool) -> Result:
        values = like["values"]
        baselines = {
            "one_daemon": values[POSTGRES] if one_daemon else None,
            "lmdb": values["stream"],
            "redis": values["redis"],
            "sqlite": values["sqlite"],
        }
        return {
            "unit": metric.unit,
            "value": value,
            "compared_by": like["compared_by"],
            "baselines": baselines,
            "versus": {name: _compare(metric, value, base) for name, base in baselines.items()},
        }

    for metric in metrics(profile):
        like = derived[metric.key]
        table[metric.key] = entry(metric, like["values"][POSTGRES], like, one_daemon=False)
    for fleet in fleet_metrics(profile):
        value = _number(_get(results, f"trait_{fleet.row}_{POSTGRES}", *fleet.path))
        table[fleet.key] = entry(by_key[fleet.like], value, derived[fleet.like], one_daemon=True)
    return table


def _memory(results: Result) -> Result:
    """The servers' memory (MB) at the end of the table and at its peak."""

    def mb(kib: Any) -> float | None:
        return None if kib is None else kib * KIB / MB

    memory: Result = {}
    for server in ("daemon", "redis", "pg_daemon"):
        end_key = f"{server}_end_kib"
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


def render_traits(
    results: Result,
    derived: Result,
    profile: Profile,
    redis: str | None,
    postgres: str | None = None,
) -> str:
    """The table that opens the report, then turnstore on PostgreSQL's (``postgres``: its
    version line, None when it did not run)."""
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
    lines += ["", *render_floors(results, derived["floors"], profile)]
    lines += ["", *_render_postgres(derived, profile, postgres)]
    lines += [f"  {line}" for line in _errors(results)]
    return "\n".join(lines) + "\n"


def _render_postgres(derived: Result, profile: Profile, postgres: str | None) -> list[str]:
    """turnstore on PostgreSQL beside LMDB, Redis and SQLite; then two daemons on its database."""
    if postgres is None:
        return ["turnstore on PostgreSQL: not run"]
    header = (
        "turnstore on PostgreSQL (stream writes)",
        "PostgreSQL",
        "LMDB",
        "Redis Streams",
        "SQLite",
        "vs LMDB",
        "vs Redis",
        "vs SQLite",
        "vs 1 daemon",
    )
    table = derived["postgres"]
    labelled: list[tuple[str, Metric]] = [(m.key, m) for m in metrics(profile)]
    by_key = {metric.key: metric for metric in metrics(profile)}
    labelled += [(f.key, replace(by_key[f.like], label=f.label)) for f in fleet_metrics(profile)]
    rows: list[tuple[str, ...]] = []
    for key, metric in labelled:
        entry = table[key]
        baselines, versus = entry["baselines"], entry["versus"]
        rows.append(
            (
                f"{metric.label} ({metric.unit})",
                _num(entry["value"], metric.unit),
                _num(baselines["lmdb"], metric.unit),
                _num(baselines["redis"], metric.unit),
                _num(baselines["sqlite"], metric.unit),
                *(_versus(metric, versus[base]) for base in ("lmdb", "redis", "sqlite")),
                _versus(metric, versus["one_daemon"]) if key not in by_key else "",
            )
        )
    for field, what in (("RssAnon", "anonymous"), ("VmRSS", "resident")):
        mine, lmdb = derived["memory"]["pg_daemon"][field], derived["memory"]["daemon"][field]
        rows.append(
            (
                f"daemon memory, {what}: end (peak) (MB)",
                f"{_mb(mine['end_mb'])} ({_mb(mine['peak_mb'])})",
                f"{_mb(lmdb['end_mb'])} ({_mb(lmdb['peak_mb'])})",
                *([""] * 6),
            )
        )
    return [
        f"turnstore on PostgreSQL: {postgres}, a fresh local cluster (fsync and "
        "synchronous_commit on), the daemon on a Unix socket; the last rows: a second daemon "
        "on the same database",
        *grid(header, rows),
        "  vs: PostgreSQL / baseline (ms rows of the live follower: PostgreSQL - baseline); "
        "LMDB = turnstore on LMDB, stream writes; 1 daemon = turnstore on PostgreSQL, one daemon",
    ]
