"""Snapshots over a daemon: :class:`TurnstoreHistoryStore`, obtained as ``client.history(key)``.

It implements :class:`~turnstore.protocols.HistoryStore` for one
conversation key and adds optimistic concurrency, kept versions and delete.
"""

from __future__ import annotations

from turnstore._convert import JSON
from turnstore._retry import NO_RETRY, RetryPolicy, call_with_retry
from turnstore._validate import check_text, check_turn
from turnstore.errors import SnapshotFormatError
from turnstore.models import ConversationSnapshot
from turnstore.results import SnapshotVersionInfo, VersionedSnapshot
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

__all__ = ["TurnstoreHistoryStore"]


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
        data = snapshot.to_json_bytes()
        request = pb.SaveRequest(key=self.key, data=data, content_type=JSON)
        retry = self._retry
        if expected_version is not None:
            check_turn(expected_version, "expected_version")
            request.expected_version = expected_version
            retry = NO_RETRY
        response = await call_with_retry(
            lambda: self._stub.Save(request, timeout=self._timeout), retry
        )
        return int(response.version)

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
        if stored.content_type not in ("", JSON):
            raise SnapshotFormatError(
                f"snapshot of {self.key!r} is {stored.content_type!r}, not JSON"
            )
        return VersionedSnapshot(
            ConversationSnapshot.from_json(stored.data), stored.version, stored.saved_at_unix_nanos
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
