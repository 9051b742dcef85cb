"""A storage engine as one credential's scope sees it (:class:`ScopedEngine`).

Both listeners read and write through it for a credential whose scope is not
the full one (:mod:`turnstore.server.access.scopes`), so one place decides what a
scope lets through:

- A read of a thread or conversation key outside the scope answers exactly
  what the engine answers for one that does not exist: the same input
  checks first (an id over its limit is still INVALID_ARGUMENT), then no
  thread, no turn, no snapshot, no versions, an empty replay. Nobody can
  tell "not yours" from "not there".
- Listings skip what the scope does not cover, seeking to its prefix and
  listed ids instead of scanning every id.
- A write outside the scope, or any write with a read-only scope, raises
  PermissionDeniedError (it names nothing of what is stored), as do the
  daemon-wide operations (stats, backups, retention) for any scope that is
  not the full one.

Only what :class:`~turnstore.server.storage.interface.StorageEngine` declares is
forwarded: a method added there must be added here too, or calls to it
through a scoped engine fail loudly instead of escaping the scope.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future

from turnstore.server.access.errors import PermissionDeniedError
from turnstore.server.access.scoped_keys import check_batch_scope, scoped_key_range
from turnstore.server.access.scoped_listing import scoped_listing
from turnstore.server.access.scopes import Scope
from turnstore.server.storage.batches import BatchOp, BatchResult, KeyRange
from turnstore.server.storage.config import Limits
from turnstore.server.storage.inputs import InputChecks
from turnstore.server.storage.interface import (
    CommitListener,
    CommitObserver,
    SpaceLevelListener,
    StorageEngine,
    WakeAll,
)
from turnstore.server.storage.values import (
    BackupResult,
    KeySummary,
    NewEvent,
    ReadBudget,
    ReplayStep,
    RetentionStats,
    SnapshotVersion,
    SpaceUsage,
    StorageStats,
    StoredSnapshot,
    SweepResult,
    ThreadSummary,
    ThreadView,
    TurnChunk,
    TurnCursor,
    replay_opening,
)


class ScopedEngine:
    """``engine`` restricted to ``scope`` (see the module's description)."""

    def __init__(self, engine: StorageEngine, scope: Scope) -> None:
        self._engine = engine
        self.scope = scope
        # The engine's own input checks, so that refusals match it exactly.
        self._checks: InputChecks | None = engine if isinstance(engine, InputChecks) else None

    # -- checks ----------------------------------------------------------------

    def _check_thread_id(self, thread_id: str) -> None:
        if self._checks is not None:
            self._checks._thread_key(thread_id)

    def _check_key(self, key: str) -> None:
        if self._checks is not None:
            self._checks._conversation_key(key)

    def _write_thread(self, thread_id: str) -> None:
        if self.scope.read_only or not self.scope.covers_thread(thread_id):
            raise PermissionDeniedError(
                "this credential may not write thread_id "
                + ("(it is read-only)" if self.scope.read_only else "(outside its scope)")
            )

    def _write_key(self, key: str) -> None:
        if self.scope.read_only or not self.scope.covers_key(key):
            raise PermissionDeniedError(
                "this credential may not write key "
                + ("(it is read-only)" if self.scope.read_only else "(outside its scope)")
            )

    def _admin(self, what: str) -> None:
        raise PermissionDeniedError(f"{what} needs a full-scope, read-write credential")

    # -- as the engine ---------------------------------------------------------

    @property
    def limits(self) -> Limits:
        return self._engine.limits

    def append(
        self,
        thread_id: str,
        turn: int,
        events: Sequence[NewEvent],
        finish: bool = False,
        expected_next_position: int | None = None,
    ) -> Future[list[int]]:
        self._write_thread(thread_id)
        return self._engine.append(thread_id, turn, events, finish, expected_next_position)

    def finish_turn(self, thread_id: str, turn: int) -> Future[int]:
        self._write_thread(thread_id)
        return self._engine.finish_turn(thread_id, turn)

    def clear(self, thread_id: str) -> Future[int]:
        self._write_thread(thread_id)
        return self._engine.clear(thread_id)

    def save_snapshot(
        self, key: str, data: bytes, content_type: str, expected_version: int | None = None
    ) -> Future[int]:
        self._write_key(key)
        return self._engine.save_snapshot(key, data, content_type, expected_version)

    def delete_snapshots(self, key: str) -> Future[int]:
        self._write_key(key)
        return self._engine.delete_snapshots(key)

    def add_commit_listener(self, listener: CommitListener) -> None:
        self._admin("adding a commit listener")

    def add_commit_observer(self, observer: CommitObserver) -> None:
        self._admin("adding a commit observer")

    def add_wake_all_listener(self, wake: WakeAll) -> None:
        self._admin("adding a wake-all listener")

    def add_space_level_listener(self, listener: SpaceLevelListener) -> None:
        self._admin("adding a space level listener")

    def view(self, thread_id: str) -> ThreadView:
        if self.scope.covers_thread(thread_id):
            return self._engine.view(thread_id)
        self._check_thread_id(thread_id)
        return ThreadView(thread_id, None, 0)

    def event_count(self, thread_id: str) -> int:
        return self.view(thread_id).end_position

    def get_turn(self, thread_id: str, turn: int, max_bytes: int | None = None) -> TurnChunk | None:
        if self.scope.covers_thread(thread_id):
            return self._engine.get_turn(thread_id, turn, max_bytes)
        self._check_thread_id(thread_id)
        InputChecks._check_turn(turn)
        return None

    # A view of a thread outside the scope is the view of a missing thread,
    # which these read as such.
    def read_commit_order(
        self, view: ThreadView, start_position: int, budget: ReadBudget
    ) -> list[bytes]:
        return self._engine.read_commit_order(view, start_position, budget)

    def turn_cursor_at_offset(self, view: ThreadView, offset: int) -> TurnCursor | None:
        return self._engine.turn_cursor_at_offset(view, offset)

    def read_turn_order(
        self, view: ThreadView, cursor: TurnCursor, budget: ReadBudget, include_empty: bool
    ) -> tuple[list[TurnChunk], TurnCursor | None]:
        return self._engine.read_turn_order(view, cursor, budget, include_empty)

    def replay_step(
        self,
        thread_id: str,
        expected_epoch: int | None,
        start_position: int,
        finish_seq: int | None,
        max_events: int,
        watched_turn: int | None = None,
        max_bytes: int = 4 * 1024 * 1024,
    ) -> ReplayStep:
        if self.scope.covers_thread(thread_id):
            return self._engine.replay_step(
                thread_id,
                expected_epoch,
                start_position,
                finish_seq,
                max_events,
                watched_turn,
                max_bytes,
            )
        self._check_thread_id(thread_id)
        # What the engines answer for a thread they do not hold.
        opening = replay_opening(thread_id, expected_epoch, start_position, None)
        assert opening is not None
        return opening

    def load_snapshot(self, key: str, version: int | None = None) -> StoredSnapshot | None:
        if self.scope.covers_key(key):
            return self._engine.load_snapshot(key, version)
        self._check_key(key)
        if version is not None:
            InputChecks._check_turn(version)
        return None

    def list_snapshot_versions(self, key: str) -> list[SnapshotVersion]:
        if self.scope.covers_key(key):
            return self._engine.list_snapshot_versions(key)
        self._check_key(key)
        return []

    def list_threads(self, start_after: str = "", limit: int = 1000) -> list[ThreadSummary]:
        """Up to ``limit`` covered threads after ``start_after``, in id order."""
        scope = self.scope
        if scope.all_threads:
            return self._engine.list_threads(start_after, limit)
        return scoped_listing(
            self._engine.list_threads,
            lambda thread: thread.thread_id,
            scope.thread_prefix,
            scope.threads,
            start_after,
            limit,
        )

    def list_recent_threads(
        self, limit: int, keep: Callable[[str], bool] | None = None
    ) -> list[ThreadSummary]:
        """Up to ``limit`` covered threads, most recently written first.

        Walks the engine's recency index past the threads the scope does not
        cover (their ids only).
        """
        covers = self.scope.covers_thread
        if self.scope.all_threads:
            return self._engine.list_recent_threads(limit, keep)
        if keep is None:
            return self._engine.list_recent_threads(limit, covers)
        outer = keep
        return self._engine.list_recent_threads(limit, lambda tid: covers(tid) and outer(tid))

    def list_keys(
        self,
        start_after: str = "",
        limit: int = 1000,
        *,
        prefix: str = "",
        end_before: str = "",
        newest_first: bool = False,
    ) -> list[KeySummary]:
        """Up to ``limit`` covered keys in the range, in key order (descending with
        ``newest_first``).

        The scope's prefix narrows the engine's range (a request prefix outside
        it lists none of its keys); each listed key the prefix does not cover
        is looked up alone, when it is in the range.
        """
        scope = self.scope
        if scope.all_keys:
            return self._engine.list_keys(
                start_after,
                limit,
                prefix=prefix,
                end_before=end_before,
                newest_first=newest_first,
            )
        if not (prefix or end_before or newest_first):
            return scoped_listing(
                self._engine.list_keys,
                lambda key: key.key,
                scope.key_prefix,
                scope.keys,
                start_after,
                limit,
            )
        return scoped_key_range(
            self._engine, scope, KeyRange(prefix, start_after, end_before, newest_first), limit
        )

    def apply_batch(self, operations: Sequence[BatchOp]) -> Future[list[BatchResult]]:
        """The engine's batch, when every key it saves or deletes is covered and every
        prefix it deletes is within the scope's key prefix; else PermissionDeniedError
        before anything is written."""
        check_batch_scope(self.scope, operations)
        return self._engine.apply_batch(operations)

    def storage_stats(self) -> StorageStats:
        self._admin("GetStats")
        raise AssertionError("unreachable")

    def space_usage(self) -> SpaceUsage:
        self._admin("the space usage")
        raise AssertionError("unreachable")

    def startup_report(self) -> dict[str, object]:
        self._admin("the startup report")
        raise AssertionError("unreachable")

    def backup(self, dest_dir: str) -> BackupResult:
        self._admin("Backup")
        raise AssertionError("unreachable")

    def sweep_retention(self, now_ns: int | None = None) -> SweepResult:
        self._admin("a retention sweep")
        raise AssertionError("unreachable")

    def retention_stats(self) -> RetentionStats:
        self._admin("GetStats")
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._admin("closing the engine")


def scoped(engine: StorageEngine, scope: Scope) -> StorageEngine:
    """``engine`` itself for the full scope, else the engine as ``scope`` sees it."""
    return engine if scope.full else ScopedEngine(engine, scope)
