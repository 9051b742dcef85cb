"""``turnstore.v1.HistoryStoreService``: versioned conversation snapshots over the engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from turnstore.server.api import readcost
from turnstore.server.api.bodies import check_json_snapshot, is_json_type
from turnstore.server.api.grpc.envelopes import MAX_CONTENT_TYPE_BYTES
from turnstore.server.api.grpc.ingress import INLINE_DECODE_BYTES
from turnstore.server.api.grpc.servicer import JSON, ServicerBase, streaming, unary
from turnstore.server.api.readcost import run_heavy
from turnstore.server.storage.errors import InvalidArgumentError
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
        expected = request.expected_version if request.HasField("expected_version") else None
        future = self._engine.save_snapshot(request.key, request.data, content_type, expected)
        version = await self._acks.wait(future)
        return pb.SaveResponse(version=version)

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
        async for page in self._pages(self._engine.list_keys, request.start_after, lambda k: k.key):
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
