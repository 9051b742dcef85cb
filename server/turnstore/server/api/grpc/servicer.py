"""What the gRPC servicers share: errors as statuses, registration, the engine off the loop.

Each service of ``turnstore.v1`` has its module (:mod:`.event_store`,
:mod:`.history_store`, :mod:`.admin`); their handlers are wrapped in
:func:`unary` or :func:`streaming`, which answer an error with the status
code of its reason (:data:`turnstore.server.api.errors.STATUS_BY_REASON`) and
the reason in the ``turnstore-error`` trailing metadata key. Blocking engine
reads run on a thread pool, never on the event loop; writes are queued to the
engine's writer thread and awaited through their futures.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, Final, ParamSpec, TypeVar

import grpc
import structlog

from turnstore.server.access.scoped_engine import scoped
from turnstore.server.access.scopes import CALL_SCOPE
from turnstore.server.api.errors import INTERNAL, status_of
from turnstore.server.api.grpc.ingress import Ingress, RawRequest
from turnstore.server.api.grpc.wire_scan import RefusedRequest
from turnstore.server.replay import replaying
from turnstore.server.replay.acks import AckPump
from turnstore.server.replay.followers import Followers
from turnstore.server.storage.errors import DaemonError, VersionConflictError
from turnstore.server.storage.interface import StorageEngine
from turnstore.server.storage.values import ReadBudget
from turnstore.v1 import turnstore_pb2 as pb

P = ParamSpec("P")
T = TypeVar("T")

log = structlog.get_logger("turnstore.service")

ERROR_METADATA_KEY: Final = "turnstore-error"
CURRENT_VERSION_METADATA_KEY: Final = "turnstore-current-version"
JSON: Final = "application/json"
# Events or turn pieces per streamed message.
EVENTS_PER_MESSAGE: Final = replaying.EVENTS_PER_BATCH
# Event bytes per streamed message: a message stops growing past this, so even
# a thread of maximal events streams within the gRPC message limit.
BYTES_PER_MESSAGE: Final = replaying.BYTES_PER_BATCH
# Threads or conversation keys per ListThreads / ListKeys message (ids are at
# most 511 bytes, so a message stays well under 1 MiB).
LISTED_PER_MESSAGE: Final = 1000


def status_for(error: DaemonError) -> grpc.StatusCode:
    """The gRPC status code of an error's reason (INTERNAL for a reason not in the table)."""
    return grpc.StatusCode[status_of(error).grpc]


async def abort_with(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    """End the call with the status, reason and message of ``error`` (INTERNAL if not ours)."""
    if isinstance(error, DaemonError):
        code, reason, message = status_for(error), error.reason, str(error)
    else:
        log.exception("internal_error", error=repr(error))
        code, reason = grpc.StatusCode[INTERNAL.grpc], DaemonError.reason
        message = "internal error; the daemon log has the details"
    metadata: tuple[tuple[str, str], ...] = ((ERROR_METADATA_KEY, reason),)
    if isinstance(error, VersionConflictError):
        metadata += ((CURRENT_VERSION_METADATA_KEY, str(error.current_version)),)
    await context.abort(code, message, trailing_metadata=metadata)


def unary(
    method: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T]]:
    """Turn exceptions of a unary handler into status codes."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            if isinstance(request, RawRequest):
                request = await request.decode()
            if isinstance(request, RefusedRequest):
                raise request.error()
            return await method(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as error:
            await abort_with(context, error)
            raise AssertionError("unreachable: abort raises") from error

    return wrapper


def streaming(
    method: Callable[..., AsyncIterator[T]],
) -> Callable[..., AsyncIterator[T]]:
    """Turn exceptions of a server-streaming handler into status codes."""

    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[T]:
        try:
            if isinstance(request, RefusedRequest):
                raise request.error()
            async for item in method(self, request, context):
                yield item
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as error:
            await abort_with(context, error)

    return wrapper


def _serialize(message: Any) -> bytes:
    """Serialize a response, passing pre-encoded bytes through unchanged."""
    if isinstance(message, bytes):
        return message
    data: bytes = message.SerializeToString()
    return data


def add_service(
    server: grpc.aio.Server, service_name: str, servicer: object, ingress: Ingress
) -> None:
    """Register every method of ``turnstore.v1.<service_name>`` on ``servicer``.

    Unlike the generated ``add_*Servicer_to_server``, handlers may yield or
    return response bytes already in wire form (the stored event records),
    and requests are checked against ``ingress``'s limits before decoding.
    """
    service = pb.DESCRIPTOR.services_by_name[service_name]
    handlers = {}
    for method in service.methods:
        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        request_class = getattr(pb, method.input_type.name)
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=ingress.deserializer(method.name, request_class),
            response_serializer=_serialize,
        )
    generic = grpc.method_handlers_generic_handler(service.full_name, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(service.full_name, handlers)


def message_budget() -> ReadBudget:
    """What one streamed message may hold: :data:`EVENTS_PER_MESSAGE`, :data:`BYTES_PER_MESSAGE`."""
    return ReadBudget(EVENTS_PER_MESSAGE, BYTES_PER_MESSAGE)


class ServicerBase:
    """The engine, the read pool, the followers and the acknowledgements every servicer uses."""

    def __init__(
        self, engine: StorageEngine, executor: Executor, followers: Followers, acks: AckPump
    ) -> None:
        self._whole_engine = engine
        self._executor = executor
        self._followers = followers
        self._acks = acks

    @property
    def _engine(self) -> StorageEngine:
        """The engine as the current call's scope sees it (the whole engine for the full scope).

        Read on the event loop, in the call's task: the scope is a context
        variable that executor threads do not inherit.
        """
        return scoped(self._whole_engine, CALL_SCOPE.get())

    async def _pages(
        self,
        fetch: Callable[[str, int], list[T]],
        start_after: str,
        key_of: Callable[[T], str],
    ) -> AsyncIterator[list[T]]:
        """Pages of a keyed listing, fetched off the loop, until one comes back short."""
        after = start_after
        while True:
            page = await self._run(fetch, after, LISTED_PER_MESSAGE)
            if page:
                yield page
            if len(page) < LISTED_PER_MESSAGE:
                return
            after = key_of(page[-1])

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking engine read on the thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
