"""``turnstore.v1.HistoryStoreService``: versioned conversation snapshots over the engine."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

import grpc

from turnstore.server.api import readcost
from turnstore.server.api.bodies import check_json_snapshot, is_json_type
from turnstore.server.api.grpc.envelopes import MAX_CONTENT_TYPE_BYTES
from turnstore.server.api.grpc.ingress import INLINE_DECODE_BYTES
from turnstore.server.api.grpc.servicer import (
    JSON,
    LISTED_PER_MESSAGE,
    ServicerBase,
    streaming,
    unary,
)
from turnstore.server.api.readcost import run_heavy
from turnstore.server.storage.batches import (
    BatchOp,
    DeleteOp,
    DeletePrefixOp,
    SaveOp,
    at_operation,
    check_batch_size,
)
from turnstore.server.storage.errors import InvalidArgumentError
from turnstore.server.storage.values import KeySummary
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc


class HistoryStoreService(ServicerBase, pb_grpc.HistoryStoreServiceServicer):
    """``turnstore.v1.HistoryStoreService`` over an :class:`StorageEngine`."""

    # Large snapshots labelled JSON are parsed to be checked one at a time
    # (made on first use, on the service's event loop).
    _large_json_checks: asyncio.Semaphore | None = None

    @unary
    async def Save(
        self, request: pb.SaveRequest, context: grpc.aio.ServicerContext
    ) -> pb.SaveResponse:
        content_type = await self._checked_content(request)
        expected = request.expected_version if request.HasField("expected_version") else None
        future = self._engine.save_snapshot(request.key, request.data, content_type, expected)
        version = await self._acks.wait(future)
        return pb.SaveResponse(version=version)

    async def _checked_content(self, request: pb.SaveRequest) -> str:
        """A save's content type (empty: JSON), its data checked when labelled JSON."""
        content_type = request.content_type or JSON
        if len(content_type.encode("utf-8")) > MAX_CONTENT_TYPE_BYTES:
            raise InvalidArgumentError(
                "content_type", f"is over the limit of {MAX_CONTENT_TYPE_BYTES} bytes"
            )
        if is_json_type(content_type):
            # Checked as strictly as event bodies; a large one off the event
            # loop, one at a time: parsing materialises the value (32 MiB of
            # `[{},{},...]` takes about 1 GB for a moment).
            if len(request.data) <= INLINE_DECODE_BYTES:
                check_json_snapshot(request.data)
            else:
                if self._large_json_checks is None:
                    self._large_json_checks = asyncio.Semaphore(1)
                async with self._large_json_checks:
                    await self._run(check_json_snapshot, request.data)
        return content_type

    @unary
    async def Batch(
        self, request: pb.BatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchResponse:
        check_batch_size(request.operations, self._engine.limits.max_batch_operations)
        operations: list[BatchOp] = []
        for index, operation in enumerate(request.operations):
            kind = operation.WhichOneof("operation")
            if kind == "save":
                save = operation.save
                try:
                    content_type = await self._checked_content(save)
                except InvalidArgumentError as error:
                    raise at_operation(index, error) from None
                expected = save.expected_version if save.HasField("expected_version") else None
                operations.append(SaveOp(save.key, save.data, content_type, expected))
            elif kind == "delete":
                delete = operation.delete
                expected = delete.expected_version if delete.HasField("expected_version") else None
                operations.append(DeleteOp(delete.key, expected))
            elif kind == "delete_prefix":
                operations.append(DeletePrefixOp(operation.delete_prefix.prefix))
            else:
                raise at_operation(
                    index,
                    InvalidArgumentError("operation", "must be save, delete or delete_prefix"),
                )
        results = await self._acks.wait(self._engine.apply_batch(operations))
        return pb.BatchResponse(
            results=[
                pb.BatchResult(
                    version=result.version,
                    removed_versions=result.removed_versions,
                    removed_keys=result.removed_keys,
                )
                for result in results
            ]
        )

    @unary
    async def Load(
        self, request: pb.LoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadResponse | bytes:
        version = request.version if request.HasField("version") else None
        stored = await run_heavy(self._executor, self._engine.load_snapshot, request.key, version)
        return readcost.load_response(stored)

    @unary
    async def ListVersions(
        self, request: pb.ListVersionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListVersionsResponse:
        kept = await self._run(self._engine.list_snapshot_versions, request.key)
        return pb.ListVersionsResponse(
            versions=[
                pb.SnapshotVersion(
                    version=stored.version,
                    saved_at_unix_nanos=stored.saved_at_ns,
                    size_bytes=stored.size_bytes,
                    content_type=stored.content_type,
                )
                for stored in kept
            ]
        )

    @unary
    async def Delete(
        self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteResponse:
        removed = await self._acks.wait(self._engine.delete_snapshots(request.key))
        return pb.DeleteResponse(removed_versions=removed)

    @streaming
    async def ListKeys(
        self, request: pb.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ListKeysResponse]:
        if request.prefix or request.end_before or request.limit or request.newest_first:
            pages = self._key_range_pages(request)
        else:
            pages = self._pages(self._engine.list_keys, request.start_after, lambda k: k.key)
        async for page in pages:
            yield pb.ListKeysResponse(
                keys=[
                    pb.KeySummary(
                        key=key.key,
                        version=key.current_version,
                        last_write_unix_nanos=key.last_write_ns,
                    )
                    for key in page
                ]
            )

    async def _key_range_pages(
        self, request: pb.ListKeysRequest
    ) -> AsyncIterator[list[KeySummary]]:
        """Pages of a ranged listing (prefix, end, limit, direction), fetched off the loop,
        until the limit is reached or a page comes back short."""
        after = request.start_after
        left = request.limit or None
        while True:
            wanted = LISTED_PER_MESSAGE if left is None else min(left, LISTED_PER_MESSAGE)
            page = await self._run(
                functools.partial(
                    self._engine.list_keys,
                    prefix=request.prefix,
                    end_before=request.end_before,
                    newest_first=request.newest_first,
                ),
                after,
                wanted,
            )
            if page:
                yield page
            if left is not None:
                left -= len(page)
                if left <= 0:
                    return
            if len(page) < wanted:
                return
            after = page[-1].key
