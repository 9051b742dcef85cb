"""Server interceptors: bearer-token access control and per-RPC metrics.

Both wrap a method's handler in one of the same kind (unary or streaming on
each side), so they work for every RPC without knowing its messages.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final

import grpc

from turnstore.server.access.errors import UnauthenticatedError
from turnstore.server.access.scopes import CALL_SCOPE, Scope
from turnstore.server.api.grpc.servicer import abort_with
from turnstore.server.api.metrics import Metrics

HEALTH_PREFIX: Final = "/grpc.health.v1.Health/"
AUTHORIZATION: Final = "authorization"

_HANDLER_FACTORIES: Final = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _behavior(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    for name in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behavior = getattr(handler, name)
        if behavior is not None:
            return behavior  # type: ignore[no-any-return]
    raise ValueError("handler has no behavior")


def _rebuild(handler: grpc.RpcMethodHandler, behavior: Callable[..., Any]) -> Any:
    factory = _HANDLER_FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return factory(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuse every call without ``authorization: Bearer <token>``, health excepted.

    ``tokens`` are the accepted tokens, each with its scope
    (:mod:`turnstore.server.access.scopes`). Tokens are compared in constant time,
    every one of them for every call. A refused call gets UNAUTHENTICATED
    and never reaches its handler; its request message is not even read
    (see :func:`_refusal`), so an unauthenticated client costs the daemon no
    more than the bytes gRPC's flow control lets it send. A call with a
    token whose scope is not the full one runs with that scope in
    :data:`~turnstore.server.access.scopes.CALL_SCOPE`, which the servicers apply
    to every thread id and key they touch.
    """

    def __init__(self, tokens: Sequence[tuple[str, Scope]]) -> None:
        if not tokens or not all(token for token, _ in tokens):
            raise ValueError("the bearer tokens must not be empty")
        self._expected = [(f"Bearer {token}".encode(), scope) for token, scope in tokens]

    def _scope_of(self, presented: bytes) -> Scope | None:
        found = None
        for expected, scope in self._expected:  # no early exit: every token costs the same
            if hmac.compare_digest(presented, expected):
                found = scope
        return found

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        presented = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == AUTHORIZATION:
                presented = value.encode() if isinstance(value, str) else value
        scope = self._scope_of(presented)
        if scope is None:
            return _refusal(handler)
        if scope.full:
            return handler
        return _with_scope(handler, scope)


def _with_scope(handler: grpc.RpcMethodHandler, scope: Scope) -> Any:
    """``handler`` run with ``scope`` as the call's :data:`CALL_SCOPE`."""
    behavior = _behavior(handler)

    if not handler.response_streaming:

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            CALL_SCOPE.set(scope)  # the call's own task: nothing else sees it
            return await behavior(request, context)

        return _rebuild(handler, unary)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        CALL_SCOPE.set(scope)
        async for response in behavior(request, context):
            yield response

    return _rebuild(handler, streaming)


async def _refuse(context: grpc.aio.ServicerContext) -> None:
    # Through the one status table, like every other refusal.
    await abort_with(
        context,
        UnauthenticatedError(
            "missing or wrong bearer token (send 'authorization: Bearer <token>')"
        ),
    )


def _refusal(handler: grpc.RpcMethodHandler) -> Any:
    """A handler that answers UNAUTHENTICATED without reading the request.

    gRPC reads (and deserializes) the message of a unary-request handler
    before calling it. The refusal is therefore registered as
    request-streaming whatever the RPC (the wire is the same) and never
    iterates its requests: the message is neither received whole nor
    decoded.
    """
    if not handler.response_streaming:

        async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
            await _refuse(context)

        return grpc.stream_unary_rpc_method_handler(
            refuse, response_serializer=handler.response_serializer
        )

    async def refuse_stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await _refuse(context)
        yield  # pragma: no cover - abort raises

    return grpc.stream_stream_rpc_method_handler(
        refuse_stream, response_serializer=handler.response_serializer
    )


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Count calls, failures and latency of every RPC into :class:`Metrics`."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        behavior = _behavior(handler)
        metrics = self._metrics

        if not handler.response_streaming:

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                failed = True
                try:
                    response = await behavior(request, context)
                    failed = False
                    return response
                finally:
                    metrics.observe_rpc(method, time.perf_counter() - started, failed)

            return _rebuild(handler, unary)

        async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            failed = True
            try:
                async for response in behavior(request, context):
                    yield response
                failed = False
            finally:
                metrics.observe_rpc(method, time.perf_counter() - started, failed)

        return _rebuild(handler, streaming)
