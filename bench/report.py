"""Turn a run's raw results into ratios, PASS/FAIL targets and a printed table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from bench.common import Result
from bench.profiles import Profile
from bench.traits_report import evaluate_traits, render_traits

MB: Final = 1_000_000
KIB: Final = 1024
MODES: Final = ("sync", "async")
# Other processes' share of the machine's CPU above which a step is flagged.
DISTURBED: Final = 0.05
VARIANTS: Final = (
    ("client", "client API"),
    ("raw", "raw stub, 4096/msg"),
    ("decoded", "client API, .envelope read"),
)


def get(tree: Any, *path: str) -> Any:
    """``tree[path[0]][path[1]]...``, or None when any step is missing."""
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or zero."""
    if not numerator or not denominator:
        return None
    return numerator / denominator


def _best_mode(results: Result, names: dict[str, str], *path: str) -> Result:
    """The faster of the sync and async redis-py results: its mode and rate."""
    best: Result = {"mode": None, "rate_per_s": None}
    for mode, name in names.items():
        rate = get(results, name, *path)
        if rate is not None and (best["rate_per_s"] is None or rate > best["rate_per_s"]):
            best = {"mode": mode, "rate_per_s": rate}
    return best


def _anon_increase_mb(results: Result, name: str) -> float | None:
    kib = get(results, name, "memory", "daemon", "peak_increase_kib", "RssAnon")
    return None if kib is None else kib * KIB / MB


def _rss_increase_mb(results: Result, name: str) -> float | None:
    kib = get(results, name, "memory", "daemon", "peak_increase_kib", "VmRSS")
    return None if kib is None else kib * KIB / MB


def _target(name: str, measured: float | None, op: str, threshold: float, unit: str) -> Result:
    if measured is None:
        passed = None
    elif op == ">=":
        passed = measured >= threshold
    else:
        passed = measured < threshold
    return {
        "name": name,
        "measured": measured,
        "op": op,
        "threshold": threshold,
        "unit": unit,
        "pass": passed,
    }


def evaluate(
    results: Result, profile: Profile, traits_only: bool = False
) -> tuple[Result, list[Result]]:
    """The derived ratios and the targets with their PASS (True) / FAIL (False) / None.

    With ``traits_only`` (a run of the user-facing table alone) the other
    rows' targets are left out.
    """
    small, large = profile.replay_sizes
    append_vs_noop = {
        str(c): ratio(
            get(results, "unary_append", "by_concurrency", str(c), "rate_per_s"),
            get(results, "noop", "by_concurrency", str(c), "rate_per_s"),
        )
        for c in profile.concurrencies
    }
    writes = {mode: f"redis_writes_{mode}" for mode in MODES}
    xadd_single = _best_mode(results, writes, "single", "rate_per_s")
    xadd_pipelined = _best_mode(results, writes, "pipelined", "rate_per_s")
    xrange = {
        str(size): _best_mode(
            results, {mode: f"redis_xrange_{size}_{mode}" for mode in MODES}, "rate_per_s"
        )
        for size in (small, large)
    }
    replay_memory = {
        str(size): {
            variant: {
                "anon_increase_mb": _anon_increase_mb(results, f"replay_{variant}_{size}"),
                "rss_increase_mb": _rss_increase_mb(results, f"replay_{variant}_{size}"),
            }
            for variant, _ in VARIANTS
        }
        for size in (small, large)
    }
    stream = get(results, "stream_append_100", "rate_per_s")
    replay = {v: get(results, f"replay_{v}_{large}", "rate_per_s") for v in ("client", "raw")}
    anon = [
        value
        for value in (_anon_increase_mb(results, f"replay_{v}_{large}") for v, _ in VARIANTS)
        if value is not None
    ]
    traits, trait_targets = evaluate_traits(results, profile)
    derived: Result = {
        "traits": traits,
        "append_vs_noop": append_vs_noop,
        "redis_best": {
            "xadd_single": xadd_single,
            "xadd_pipelined": xadd_pipelined,
            "xrange": xrange,
        },
        "replay_memory": replay_memory,
    }
    if traits_only:
        return derived, trait_targets
    xrange_large = xrange[str(large)]["rate_per_s"]
    targets = [
        *trait_targets,
        _target(
            f"replay {large:,} (client API) / Redis XRANGE {large:,}",
            ratio(replay["client"], xrange_large),
            ">=",
            1.0,
            "x",
        ),
        _target(
            f"replay {large:,} (raw stub) / Redis XRANGE {large:,}",
            ratio(replay["raw"], xrange_large),
            ">=",
            1.0,
            "x",
        ),
        _target(f"replay {large:,} (client API) events/s", replay["client"], ">=", 400_000, "/s"),
        _target(f"replay {large:,} (raw stub) events/s", replay["raw"], ">=", 400_000, "/s"),
        _target(
            "stream append (100/item) / Redis pipelined XADD",
            ratio(stream, xadd_pipelined["rate_per_s"]),
            ">=",
            1.5,
            "x",
        ),
        _target("stream append (100/item) events/s", stream, ">=", 100_000, "/s"),
        _target(
            "unary append / no-op RPC, 64 in flight",
            append_vs_noop.get("64"),
            ">=",
            0.8,
            "x",
        ),
        _target(
            f"daemon RssAnon increase, replay {large:,} (worst variant)",
            max(anon) if anon else None,
            "<",
            50,
            "MB",
        ),
    ]
    return derived, targets


# ---------------------------------------------------------------- rendering


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ms(summary: Any) -> tuple[str, str]:
    return _num(get(summary, "p50_ms"), 2), _num(get(summary, "p99_ms"), 2)


Row = tuple[str, str, str, str, str]


def _rate_row(label: str, result: Any, unit: str, notes: str = "", latency: Any = None) -> Row:
    if get(result, "error") is not None:
        return (label, "ERROR", "", "", str(result["error"]).splitlines()[0][:60])
    p50, p99 = _ms(result if latency is None else latency)
    return (label, f"{_num(get(result, 'rate_per_s'))} {unit}", p50, p99, notes)


def _memory_note(results: Result, name: str) -> str:
    anon, rss = _anon_increase_mb(results, name), _rss_increase_mb(results, name)
    return f"daemon peak +{_num(anon, 1)} MB anon, +{_num(rss, 1)} MB RSS"


def _turnstore_rows(results: Result, derived: Result, profile: Profile) -> list[Row]:
    if get(results, "turnstore", "error") is not None:
        return [_rate_row("turnstore", results["turnstore"], "")]
    rows: list[Row] = []
    for c in profile.concurrencies:
        rows.append(
            _rate_row(
                f"no-op GetStats, {c} in flight",
                get(results, "noop", "by_concurrency", str(c)),
                "/s",
            )
        )
    for c in profile.concurrencies:
        r = derived["append_vs_noop"][str(c)]
        rows.append(
            _rate_row(
                f"unary append, {c} in flight",
                get(results, "unary_append", "by_concurrency", str(c)),
                "/s",
                f"{_num(r, 2)}x no-op",
            )
        )
    for per_item, window in profile.stream_items:
        result = get(results, f"stream_append_{per_item}")
        rows.append(
            _rate_row(
                f"stream append, {per_item}/item, {window} in flight",
                result,
                "ev/s",
                "latency: submit to item ack",
                get(result, "item_ack"),
            )
        )
    for size in profile.replay_sizes:
        rows.append(
            _rate_row(f"  (setup) load {size:,}-event thread", get(results, f"load_{size}"), "ev/s")
        )
        for variant, label in VARIANTS:
            name = f"replay_{variant}_{size}"
            result = get(results, name)
            note = f"{_num(get(result, 'mb_per_s'), 1)} MB/s; {_memory_note(results, name)}"
            if result is not None and result.get("complete") is False:
                note += f"; INCOMPLETE ({get(result, 'count')})"
            rows.append(_rate_row(f"replay {size:,} ({label})", result, "ev/s", note))
    tail = get(results, "live_tail")
    if get(tail, "error") is not None:
        rows.append(_rate_row("live tail", tail, ""))
    else:
        send = get(tail, "send_to_follower")
        rows.append(
            (
                f"live tail, {get(tail, 'events')} events: ack -> follower",
                "",
                *_ms(get(tail, "ack_to_follower")),
                f"{get(tail, 'follower_first')} arrived before the ack",
            )
        )
        rows.append(("live tail: append sent -> follower", "", *_ms(send), ""))
    sse = get(results, "sse_live_tail")
    if get(sse, "error") is not None:
        rows.append(_rate_row("SSE live tail", sse, ""))
    elif sse is not None:
        rows.append(
            (
                f"SSE live tail, {get(sse, 'events')} events: ack -> browser reader",
                "",
                *_ms(get(sse, "ack_to_follower")),
                "EventSource-style reader, aiohttp",
            )
        )
    fan = get(results, "sse_followers")
    if get(fan, "error") is not None:
        rows.append(_rate_row("SSE followers", fan, ""))
    elif fan is not None:
        memory = _anon_increase_mb(results, "sse_followers")
        rows.append(
            (
                f"{get(fan, 'followers')} SSE followers of one live thread",
                f"{_num(get(fan, 'deliveries_per_s'))} deliveries/s",
                "",
                "",
                f"daemon +{_num(memory, 1)} MB anonymous at the peak",
            )
        )
    snapshots = get(results, "snapshots")
    if get(snapshots, "error") is not None:
        rows.append(_rate_row("snapshots", snapshots, ""))
    for size in profile.snapshot_sizes:
        entry = get(snapshots, "by_size", str(size))
        for op in ("save", "load"):
            rows.append(
                _rate_row(
                    f"snapshot {op} {_size(size)}",
                    get(entry, op),
                    "ops/s",
                    f"{_num(get(entry, f'{op}_mb_per_s'), 1)} MB/s",
                )
            )
    return rows


def _size(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size // (1024 * 1024)} MB"
    return f"{size // 1024} KB"


def _redis_rows(results: Result, derived: Result, profile: Profile) -> list[Row]:
    rows: list[Row] = []
    if get(results, "redis", "error") is not None:
        return [_rate_row("Redis", results["redis"], "")]
    if not any(name.startswith("redis_") for name in results):
        return [("not run", "", "", "", "")]
    best = derived["redis_best"]
    for mode in MODES:
        result = get(results, f"redis_writes_{mode}")
        mark = " *" if best["xadd_single"]["mode"] == mode else ""
        rows.append(
            _rate_row(f"XADD one at a time ({mode}){mark}", get(result, "single") or result, "/s")
        )
    for mode in MODES:
        result = get(results, f"redis_writes_{mode}")
        mark = " *" if best["xadd_pipelined"]["mode"] == mode else ""
        rows.append(
            _rate_row(
                f"XADD pipelined {profile.redis_pipeline} ({mode}){mark}",
                get(result, "pipelined") or result,
                "/s",
                "latency: per pipeline",
                get(result, "pipelined", "batch"),
            )
        )
    for size in profile.replay_sizes:
        rows.append(
            _rate_row(
                f"  (setup) load {size:,}-entry stream", get(results, f"redis_load_{size}"), "/s"
            )
        )
        for mode in MODES:
            result = get(results, f"redis_xrange_{size}_{mode}")
            mark = " *" if best["xrange"][str(size)]["mode"] == mode else ""
            rows.append(
                _rate_row(
                    f"XRANGE {size:,}, pages of {profile.xrange_page} ({mode}){mark}",
                    result,
                    "/s",
                    f"{_num(get(result, 'mb_per_s'), 1)} MB/s",
                )
            )
    return rows


def _lmdb_rows(results: Result, profile: Profile) -> list[Row]:
    lmdb = get(results, "lmdb")
    if get(lmdb, "error") is not None:
        return [_rate_row("raw LMDB", lmdb, "")]
    rows: list[Row] = []
    for n in profile.lmdb_puts_per_txn:
        result = get(lmdb, "puts_by_txn_size", str(n))
        rows.append(
            _rate_row(
                f"{n} put(s) per synced txn",
                result,
                "puts/s",
                "latency: per txn",
                get(result, "txn"),
            )
        )
    for size in profile.replay_sizes:
        result = get(lmdb, "scan", str(size))
        rows.append(
            _rate_row(
                f"cursor scan of {size:,} values",
                result,
                "values/s",
                f"{_num(get(result, 'mb_per_s'), 1)} MB/s",
            )
        )
    return rows


def _table(title: str, header: Row, rows: Sequence[Row]) -> list[str]:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(5)]
    lines = [title]
    for row in (header, *rows):
        cells = [
            row[0].ljust(widths[0]),
            row[1].rjust(widths[1]),
            row[2].rjust(widths[2]),
            row[3].rjust(widths[3]),
            row[4],
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return [*lines, ""]


def _target_rows(targets: list[Result]) -> list[Row]:
    rows: list[Row] = []
    for target in targets:
        digits = {"x": 2, "ms": 2, "MB": 1}.get(target["unit"], 0)
        measured = _num(target["measured"], digits)
        threshold = f"{target['op']} {_num(target['threshold'], min(digits, 1))}"
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[target["pass"]]
        rows.append((target["name"], f"{measured} {target['unit']}", threshold, verdict, ""))
    return rows


def _other_tables(meta: Result, results: Result, derived: Result, profile: Profile) -> list[str]:
    """The rows below the user-facing table: turnstore's, Redis's and raw LMDB's."""
    header: Row = ("scenario", "rate", "p50 ms", "p99 ms", "notes")
    lines = _table(
        "turnstore: daemon on a Unix socket, load from a separate client process",
        header,
        _turnstore_rows(results, derived, profile),
    )
    lines += _table(
        f"Redis Streams: {meta.get('redis_server', 'not run')}, appendfsync always; "
        "redis-py + hiredis (* = faster mode, used in the targets)",
        header,
        _redis_rows(results, derived, profile),
    )
    lines += _table(
        "raw LMDB: python lmdb in one process, sync=True, 256-byte values",
        header,
        _lmdb_rows(results, profile),
    )
    return lines


def render(
    meta: Result, results: Result, derived: Result, targets: list[Result], profile: Profile
) -> str:
    """The printed report: one table per system, then the targets."""
    machine = meta.get("machine", {})
    lines = [
        f"turnstore benchmark ({profile.name} profile), {meta.get('started_at', '')}, "
        f"{machine.get('cpus')} CPUs, commit {str(machine.get('git_commit', ''))[:10]}"
        f" (+{machine.get('git_uncommitted_files', 0)} uncommitted files)",
        "",
        render_traits(
            results,
            derived["traits"],
            profile,
            meta.get("trait_redis_server"),
            meta.get("trait_postgres_server"),
        ),
    ]
    if not meta.get("traits_only"):
        lines += _other_tables(meta, results, derived, profile)
    lines += _table(
        "targets", ("target", "measured", "threshold", "result", ""), _target_rows(targets)
    )
    other = meta.get("other_cpu", {}).get("share")
    if other is not None and other > DISTURBED:
        lines.append(
            f"WARNING: other processes used {other:.0%} of the machine's CPU during this run; "
            "its numbers are disturbed."
        )
    disturbed = [
        f"{name} {result['other_cpu_share']:.0%}"
        for name, result in results.items()
        if (result.get("other_cpu_share") or 0.0) > DISTURBED
    ]
    if disturbed:
        lines.append("Steps during which other processes used the CPU: " + ", ".join(disturbed))
    if profile.name == "quick":
        lines.append(
            "(quick profile: 10x smaller threads and shorter loops; not comparable to full runs)"
        )
    return "\n".join(lines).rstrip() + "\n"
