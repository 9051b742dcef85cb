"""Prometheus metrics of the daemon, on an opt-in loopback HTTP endpoint.

Per-RPC call counts, failures and latency (filled by
:class:`turnstore.server.api.grpc.interceptors.MetricsInterceptor`), commit batch
sizes and commit (fsync) time (an engine commit observer), live followers,
open replays and the bytes of replay messages not yet sent (both backends);
where the backend has a size ceiling of turnstore's (LMDB) also the map size,
the data file's size on disk and how full it is.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from turnstore.server.replay.followers import Followers
from turnstore.server.storage.interface import StorageEngine
from turnstore.server.storage.values import SpaceUsage


class Metrics:
    """The daemon's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpc_calls = Counter(
            "turnstore_rpc_calls",
            "RPCs handled, by method",
            ["method"],
            registry=self.registry,
        )
        self.rpc_failures = Counter(
            "turnstore_rpc_failures",
            "RPCs that ended with a non-OK status, by method",
            ["method"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "turnstore_rpc_seconds",
            "RPC duration (for streams, until the stream ended), by method",
            ["method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30),
            registry=self.registry,
        )
        self.commit_writes = Histogram(
            "turnstore_commit_writes",
            "Writes (appends, finishes, saves, ...) sharing one transaction and fsync",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "turnstore_commit_seconds",
            "Time to commit one transaction, fsync included",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1),
            registry=self.registry,
        )

    def observe_rpc(self, method: str, seconds: float, failed: bool) -> None:
        """Record one finished RPC."""
        self.rpc_calls.labels(method).inc()
        self.rpc_seconds.labels(method).observe(seconds)
        if failed:
            self.rpc_failures.labels(method).inc()

    def observe_commit(self, writes: int, seconds: float) -> None:
        """Record one commit (an engine commit observer; any thread)."""
        self.commit_writes.observe(writes)
        self.commit_seconds.observe(seconds)

    def watch(self, engine: StorageEngine, followers: Followers) -> None:
        """Export the followers' gauges, read at scrape time, and observe the engine's commits.

        Also the backend's space gauges where it has them (:meth:`_watch_space`).
        """
        engine.add_commit_observer(self.observe_commit)
        self._gauges(
            ("turnstore_live_followers", "Replays waiting for commits", lambda: followers.waiting),
            ("turnstore_open_replays", "Replay streams open", lambda: followers.open_replays),
            (
                "turnstore_follower_held_bytes",
                "Bytes replays reserved for or hold in messages gRPC has not sent, all followers",
                lambda: followers.send_budget.held_bytes,
            ),
            (
                "turnstore_follower_ending_bytes",
                "Bytes of the last messages of followers ended as too slow, not yet sent",
                lambda: followers.send_budget.ending_bytes,
            ),
            (
                "turnstore_followers_ended_too_slow",
                "Followers ended with follower_too_slow since the daemon started",
                lambda: followers.send_budget.ended_too_slow,
            ),
        )
        self._watch_space(engine)

    def _watch_space(self, engine: StorageEngine) -> None:
        """Export the backend's space gauges, where it has a ceiling of turnstore's (LMDB).

        A daemon on PostgreSQL has none of these: no map, no file, no ceiling
        of turnstore's (an absent ``turnstore_max_db_bytes`` means no limit),
        and its table sizes cost a query that a scrape should not pay.
        """
        if not engine.space_usage().max_bytes:
            return

        def read(field: Callable[[SpaceUsage], float]) -> Callable[[], float]:
            return lambda: field(engine.space_usage())

        self._gauges(
            ("turnstore_map_size_bytes", "The LMDB map size", read(lambda u: u.reserved_bytes)),
            (
                "turnstore_database_bytes",
                "Size of the LMDB data file on disk",
                read(lambda u: u.file_bytes),
            ),
            (
                "turnstore_used_bytes",
                "Bytes of database pages in use (free pages not counted)",
                read(lambda u: u.used_bytes),
            ),
            (
                "turnstore_used_ratio",
                "Pages in use as a fraction of the write limit (additions stop at 1)",
                read(lambda u: u.used_fraction),
            ),
            (
                "turnstore_max_db_bytes",
                "The ceiling of the database size (--max-db-size)",
                read(lambda u: u.max_bytes),
            ),
            (
                "turnstore_write_limit_bytes",
                "Where writes that add data stop: the ceiling minus the delete reserve",
                read(lambda u: u.write_limit_bytes),
            ),
        )

    def _gauges(self, *gauges: tuple[str, str, Callable[[], float]]) -> None:
        for name, documentation, read in gauges:
            Gauge(name, documentation, registry=self.registry).set_function(read)

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` over HTTP on a background thread; return the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
