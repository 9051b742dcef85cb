"""Snapshots over a daemon: :class:`TurnstoreHistoryStore`, obtained as ``client.history(key)``.

It implements :class:`~turnstore.protocols.HistoryStore` for one
conversation key and adds optimistic concurrency, kept versions, delete and
byte payloads of any content type (``save_bytes`` / ``load_bytes``). The
operations across keys (a ranged ``list_keys``, an atomic ``batch`` of
:class:`BatchSave` / :class:`BatchDelete` / :class:`BatchDeletePrefix`) are
methods of the client, built here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from turnstore._convert import JSON
from turnstore._retry import NO_RETRY, RetryPolicy, call_with_retry
from turnstore._status import mapped_stream
from turnstore._validate import check_text, check_turn
from turnstore.admin import KeyInfo
from turnstore.errors import SnapshotFormatError
from turnstore.models import ConversationSnapshot
from turnstore.results import BatchResult, Blob, SnapshotVersionInfo, VersionedSnapshot
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

__all__ = [
    "BatchDelete",
    "BatchDeletePrefix",
    "BatchOperation",
    "BatchSave",
    "TurnstoreHistoryStore",
    "apply_batch",
    "batch_request",
    "list_keys",
]


class TurnstoreHistoryStore:
    """:class:`~turnstore.protocols.HistoryStore` for one conversation key.

    Obtain it as ``client.history(key)``. Snapshots are stored as their JSON
    text with content type ``application/json``. Beyond the contract's
    ``save`` and ``load``, it offers optimistic concurrency
    (:meth:`save_versioned` with ``expected_version``), the kept versions
    (:meth:`list_versions`, :meth:`load_versioned` of one) and :meth:`delete`.
    """

    def __init__(
        self,
        stub: pb_grpc.HistoryStoreServiceStub,
        key: str,
        timeout: float | None,
        retry: RetryPolicy,
    ) -> None:
        check_text(key, "key")
        self._stub = stub
        self.key = key
        self._timeout = timeout
        self._retry = retry

    async def save(self, snapshot: ConversationSnapshot) -> None:
        """Store ``snapshot`` as a full overwrite of the previous one, durably."""
        await self.save_versioned(snapshot)

    async def save_versioned(
        self, snapshot: ConversationSnapshot, expected_version: int | None = None
    ) -> int:
        """Like :meth:`save`, returning the new version (1 for the first save).

        With ``expected_version`` (the version last loaded; 0 for "nothing is
        stored"), the save happens only if the key is still at that version,
        else VersionConflictError (with ``current_version``) is raised and
        nothing changes. Such a save is not retried on UnavailableError, as
        its first attempt may have committed.
        """
        return await self.save_bytes(snapshot.to_json_bytes(), JSON, expected_version)

    async def load(self) -> ConversationSnapshot | None:
        """The latest saved snapshot, or None when nothing was ever saved.

        Raises SnapshotFormatError when the stored data is not a valid
        version-1 snapshot (written by another client, for example).
        """
        loaded = await self.load_versioned()
        return None if loaded is None else loaded.snapshot

    async def load_versioned(self, version: int | None = None) -> VersionedSnapshot | None:
        """The latest snapshot (or the kept ``version``) with its version.

        None when nothing is stored, the key was deleted, or that version is
        no longer kept.
        """
        blob = await self.load_bytes(version)
        if blob is None:
            return None
        if blob.content_type != JSON:
            raise SnapshotFormatError(
                f"snapshot of {self.key!r} is {blob.content_type!r}, not JSON"
            )
        return VersionedSnapshot(
            ConversationSnapshot.from_json(blob.data), blob.version, blob.saved_at_unix_nanos
        )

    async def save_bytes(
        self, data: bytes, content_type: str, expected_version: int | None = None
    ) -> int:
        """Store ``data`` as the key's next version, whatever it holds; the new version.

        ``content_type`` names its encoding (say ``application/octet-stream``;
        at most 128 bytes, no NUL). Other types are stored as opaque bytes;
        ``application/json`` (or empty) data must still be strict JSON, else
        InvalidArgumentError. ``expected_version`` as for :meth:`save_versioned`
        (such a save is not retried on UnavailableError).
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        request = pb.SaveRequest(key=self.key, data=bytes(data), content_type=content_type)
        retry = self._retry
        if expected_version is not None:
            check_turn(expected_version, "expected_version")
            request.expected_version = expected_version
            retry = NO_RETRY
        response = await call_with_retry(
            lambda: self._stub.Save(request, timeout=self._timeout), retry
        )
        return int(response.version)

    async def load_bytes(self, version: int | None = None) -> Blob | None:
        """The latest snapshot (or the kept ``version``) as stored: bytes and content type.

        Never refuses what is stored (a JSON snapshot comes back as its text).
        None when nothing is stored, the key was deleted, or that version is
        no longer kept.
        """
        request = pb.LoadRequest(key=self.key)
        if version is not None:
            check_turn(version, "version")
            request.version = version
        response = await call_with_retry(
            lambda: self._stub.Load(request, timeout=self._timeout), self._retry
        )
        if not response.found:
            return None
        stored = response.snapshot
        return Blob(
            stored.data, stored.content_type or JSON, stored.version, stored.saved_at_unix_nanos
        )

    async def list_versions(self) -> list[SnapshotVersionInfo]:
        """The kept versions, newest first; empty for an unknown or deleted key."""
        request = pb.ListVersionsRequest(key=self.key)
        response = await call_with_retry(
            lambda: self._stub.ListVersions(request, timeout=self._timeout), self._retry
        )
        return [
            SnapshotVersionInfo(v.version, v.saved_at_unix_nanos, v.size_bytes, v.content_type)
            for v in response.versions
        ]

    async def delete(self) -> int:
        """Delete every kept version; return how many. A no-op for an unknown key.

        Versions do not restart: the next save gets a higher version.
        """
        request = pb.DeleteRequest(key=self.key)
        response = await call_with_retry(
            lambda: self._stub.Delete(request, timeout=self._timeout), self._retry
        )
        return int(response.removed_versions)


@dataclass(frozen=True)
class BatchSave:
    """A save in :func:`TurnstoreClient.batch <turnstore.client.TurnstoreClient.batch>`:
    ``data`` under ``key`` with ``content_type`` (JSON must be strict JSON), only if
    the key is at ``expected_version`` (0: nothing stored) when given."""

    key: str
    data: bytes
    content_type: str = JSON
    expected_version: int | None = None


@dataclass(frozen=True)
class BatchDelete:
    """A delete of every kept version of ``key`` in a batch, only if the key is at
    ``expected_version`` (0: nothing stored) when given. The key keeps its counter."""

    key: str
    expected_version: int | None = None


@dataclass(frozen=True)
class BatchDeletePrefix:
    """A delete of every key starting with ``prefix`` (not empty) in a batch. For a scoped
    credential the prefix must start with the scope's ``key_prefix``."""

    prefix: str


BatchOperation = BatchSave | BatchDelete | BatchDeletePrefix


def batch_request(operations: Sequence[BatchOperation]) -> pb.BatchRequest:
    """The wire request of a batch; TypeError for anything but the three operations."""
    request = pb.BatchRequest()
    for index, operation in enumerate(operations):
        entry = request.operations.add()
        if isinstance(operation, BatchSave):
            if not isinstance(operation.data, bytes | bytearray | memoryview):
                raise TypeError(f"operations[{index}].data must be bytes")
            entry.save.key = operation.key
            entry.save.data = bytes(operation.data)
            entry.save.content_type = operation.content_type
            if operation.expected_version is not None:
                check_turn(operation.expected_version, f"operations[{index}].expected_version")
                entry.save.expected_version = operation.expected_version
        elif isinstance(operation, BatchDelete):
            entry.delete.key = operation.key
            if operation.expected_version is not None:
                check_turn(operation.expected_version, f"operations[{index}].expected_version")
                entry.delete.expected_version = operation.expected_version
        elif isinstance(operation, BatchDeletePrefix):
            entry.delete_prefix.prefix = operation.prefix
        else:
            raise TypeError(
                f"operations[{index}] must be BatchSave, BatchDelete or BatchDeletePrefix, "
                f"not {type(operation).__name__}"
            )
    return request


async def apply_batch(
    stub: pb_grpc.HistoryStoreServiceStub,
    operations: Sequence[BatchOperation],
    call_timeout: float | None,
    retry: RetryPolicy,
) -> list[BatchResult]:
    """Send a batch; retried on UnavailableError only when no operation is conditional
    and every one is idempotent to repeat (deletes only: a repeated save would add a
    version)."""
    request = batch_request(operations)
    safe = all(
        isinstance(op, BatchDelete | BatchDeletePrefix)
        and getattr(op, "expected_version", None) is None
        for op in operations
    )
    response = await call_with_retry(
        lambda: stub.Batch(request, timeout=call_timeout), retry if safe else NO_RETRY
    )
    return [BatchResult(r.version, r.removed_versions, r.removed_keys) for r in response.results]


async def list_keys(
    stub: pb_grpc.HistoryStoreServiceStub,
    prefix: str,
    start_after: str,
    end_before: str,
    limit: int,
    newest_first: bool,
) -> AsyncIterator[KeyInfo]:
    """The keys of a ranged ``ListKeys`` call, as they stream in."""
    if limit < 0:
        raise ValueError("limit must be 0 (no limit) or more")
    request = pb.ListKeysRequest(
        prefix=prefix,
        start_after=start_after,
        end_before=end_before,
        limit=limit,
        newest_first=newest_first,
    )
    async for message in mapped_stream(stub.ListKeys(request)):
        for key in message.keys:
            yield KeyInfo(key.key, key.version, key.last_write_unix_nanos)
