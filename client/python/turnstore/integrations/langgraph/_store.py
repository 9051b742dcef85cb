"""The key-value operations TurnstoreSaver needs, over the async client.

Byte values with a content type (``load_bytes``), prefix listings newest
first with an exclusive end and a limit (``list_keys``), and an
all-or-nothing batch of saves and deletes across keys (``batch``). Runs on
the event loop the async client was made on.
"""

from __future__ import annotations

from turnstore.client import TurnstoreClient
from turnstore.history import BatchDelete, BatchDeletePrefix, BatchOperation, BatchSave
from turnstore.results import Blob

# The daemon's default --max-batch-operations: larger batches are cut here.
MAX_BATCH_OPERATIONS = 1000

Save = BatchSave
Delete = BatchDelete
DeletePrefix = BatchDeletePrefix
Operation = BatchOperation


class KeyStore:
    """The saver's view of the daemon's history store."""

    def __init__(self, client: TurnstoreClient) -> None:
        self._client = client

    async def load(self, key: str) -> Blob | None:
        """The latest value of ``key`` as stored, or None when absent (or deleted)."""
        return await self._client.history(key).load_bytes()

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
        cuts the listing, which then reads only that many keys.
        """
        return [
            info.key
            async for info in self._client.list_keys(
                prefix=prefix, end_before=end_before, limit=limit, newest_first=newest_first
            )
        ]

    async def batch(self, operations: list[Operation]) -> None:
        """Apply ``operations`` in order, all or nothing, in one durable commit.

        A version conflict raises VersionConflictError and changes nothing.
        """
        await self._client.batch(operations)
