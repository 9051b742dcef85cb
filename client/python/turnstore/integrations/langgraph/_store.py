"""The key-value operations TurnstoreSaver needs, over the async client's history store.

Byte values with a content type, prefix listings (newest first, with an
exclusive end and a limit) and an all-or-nothing batch of saves and deletes
across keys. Runs on the event loop the async client was made on.
"""

from __future__ import annotations

from dataclasses import dataclass

from turnstore._retry import NO_RETRY, call_with_retry
from turnstore._status import mapped_stream
from turnstore.client import TurnstoreClient
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

# The daemon's default --max-batch-operations: larger batches are cut here.
MAX_BATCH_OPERATIONS = 1000


@dataclass(frozen=True)
class Blob:
    """A stored value: its bytes, content type and version."""

    data: bytes
    content_type: str
    version: int


@dataclass(frozen=True)
class Save:
    """Store ``data`` at ``key`` (only if at ``expected_version``, when given; 0: absent)."""

    key: str
    data: bytes
    content_type: str
    expected_version: int | None = None


@dataclass(frozen=True)
class Delete:
    """Delete ``key`` (only if at ``expected_version``, when given)."""

    key: str
    expected_version: int | None = None


@dataclass(frozen=True)
class DeletePrefix:
    """Delete every key starting with ``prefix`` (non-empty)."""

    prefix: str


Operation = Save | Delete | DeletePrefix


class KeyStore:
    """The saver's view of the daemon's history store."""

    def __init__(self, client: TurnstoreClient) -> None:
        self._client = client
        self._stub = pb_grpc.HistoryStoreServiceStub(client._channel)
        self._timeout = client._timeout
        self._retry = client._retry

    async def load(self, key: str) -> Blob | None:
        """The latest value of ``key``, or None when absent (or deleted)."""
        request = pb.LoadRequest(key=key)
        response = await call_with_retry(
            lambda: self._stub.Load(request, timeout=self._timeout), self._retry
        )
        if not response.found:
            return None
        stored = response.snapshot
        return Blob(stored.data, stored.content_type, stored.version)

    async def keys(
        self,
        prefix: str,
        *,
        newest_first: bool = False,
        end_before: str = "",
        limit: int = 0,
    ) -> list[str]:
        """The live keys starting with ``prefix``, sorted (descending with ``newest_first``).

        ``end_before`` (exclusive) bounds them from above; ``limit`` (0: none)
        cuts the listing.
        """
        # Today's ListKeys lists ascending from a start key: read the prefix's
        # range and cut it here.
        found: list[str] = []
        request = pb.ListKeysRequest(start_after=prefix)
        call = self._stub.ListKeys(request, timeout=self._timeout)
        done = False
        async for message in mapped_stream(call):
            for info in message.keys:
                if not info.key.startswith(prefix) or (end_before and info.key >= end_before):
                    done = True
                    break
                found.append(info.key)
            if done:
                call.cancel()
                break
        if newest_first:
            found.reverse()
        return found[:limit] if limit else found

    async def batch(self, operations: list[Operation]) -> None:
        """Apply ``operations`` in order.

        A version conflict raises VersionConflictError. Today's API has no
        atomic batch: the operations run one by one, those with an expected
        version first (so a conflict changes nothing).
        """
        guarded = [
            op
            for op in operations
            if not isinstance(op, DeletePrefix) and op.expected_version is not None
        ]
        rest = [op for op in operations if op not in guarded]
        for operation in guarded + rest:
            await self._apply(operation)

    async def _apply(self, operation: Operation) -> None:
        if isinstance(operation, Save):
            save = pb.SaveRequest(
                key=operation.key, data=operation.data, content_type=operation.content_type
            )
            retry = self._retry
            if operation.expected_version is not None:
                save.expected_version = operation.expected_version
                retry = NO_RETRY
            await call_with_retry(lambda: self._stub.Save(save, timeout=self._timeout), retry)
        elif isinstance(operation, Delete):
            if operation.expected_version is not None:
                current = await self.load(operation.key)
                if (current.version if current else 0) != operation.expected_version:
                    from turnstore.errors import VersionConflictError

                    raise VersionConflictError(
                        f"{operation.key!r} is not at version {operation.expected_version}"
                    )
            delete = pb.DeleteRequest(key=operation.key)
            await call_with_retry(
                lambda: self._stub.Delete(delete, timeout=self._timeout), self._retry
            )
        else:
            for key in await self.keys(operation.prefix):
                await self._apply(Delete(key))
