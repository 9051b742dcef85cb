"""The LMDB engine's calls over many conversation keys: ranged listings and the atomic
batch (:class:`KeyRangeCalls`, mixed into :class:`~.engine.LmdbEngine`).

The work is in :func:`.operations.list_keys` (a walk of ``live_conversations``)
and :func:`.snapshots.apply_batch` (a transaction nested in the writer's).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future

from turnstore.server.storage.batches import BatchOp, BatchResult, KeyRange, SaveOp
from turnstore.server.storage.inputs import InputChecks
from turnstore.server.storage.lmdb import operations, snapshots
from turnstore.server.storage.lmdb.state import LmdbState
from turnstore.server.storage.lmdb.writer import Writer
from turnstore.server.storage.values import KeySummary


class KeyRangeCalls(InputChecks):
    """``list_keys`` and ``apply_batch`` over the engine's state and writer."""

    _state: LmdbState
    _writer: Writer

    def apply_batch(self, operations: Sequence[BatchOp]) -> Future[list[BatchResult]]:
        """Apply saves and deletes across keys in order, all or nothing, in one commit;
        resolves to one result per operation.

        Refused whole (InvalidArgumentError or VersionConflictError naming the
        operation's index) when any operation would be refused alone.
        """
        checked = self._checked_batch(operations)
        state = self._state
        frees = not any(isinstance(operation, SaveOp) for operation in operations)
        return self._writer.submit(
            None,
            lambda txn, now_ns: snapshots.apply_batch(state, txn, now_ns, checked),
            frees=frees,
        )

    def list_keys(
        self,
        start_after: str = "",
        limit: int = 1000,
        *,
        prefix: str = "",
        end_before: str = "",
        newest_first: bool = False,
    ) -> list[KeySummary]:
        """Up to ``limit`` conversation keys holding a snapshot in a range (see
        :class:`~turnstore.server.storage.batches.KeyRange`), in the byte order of their
        UTF-8 form, descending with ``newest_first``. Reads only the keys it returns.
        Consistency as for :meth:`list_threads`."""
        key_range = KeyRange(prefix, start_after, end_before, newest_first)
        with self._state.read() as txn:
            return operations.list_keys(self._state, txn, key_range, limit)
