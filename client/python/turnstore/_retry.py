"""How the client retries calls while the daemon is unavailable."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import grpc

from turnstore._status import error_from_rpc
from turnstore.errors import UnavailableError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How calls that fail with UnavailableError are retried.

    ``attempts`` counts the first try; delays double from ``initial_backoff``
    up to ``max_backoff`` seconds, each with up to 50% random jitter. Retries
    are safe because appends are idempotent by event id; a save with an
    expected version and streaming reads in progress are never retried.
    Over an append stream (the client's shared one, or an ``appender()``),
    ``attempts`` bounds how many streams one append or finish is sent on
    before it fails.
    """

    attempts: int = 6
    initial_backoff: float = 0.1
    max_backoff: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("RetryPolicy backoffs must not be negative")

    def delay(self, retry: int) -> float:
        """The pause before retry number ``retry`` (1 for the second attempt)."""
        base = min(self.initial_backoff * 2 ** max(retry - 1, 0), self.max_backoff)
        return float(base * (1 + random.random() / 2))

    def delays(self) -> list[float]:
        """The pauses before the second, third, ... attempt."""
        return [self.delay(n) for n in range(1, self.attempts)]


NO_RETRY: Final = RetryPolicy(attempts=1)


async def call_with_retry(
    make_call: Callable[[], Awaitable[T]],
    retry: RetryPolicy = NO_RETRY,
    done_if_retry_finds: tuple[type[Exception], T] | None = None,
) -> T:
    """Run a call, mapping gRPC errors; retry it while the daemon is unavailable.

    With ``done_if_retry_finds=(error_class, result)``, a retry that fails with
    ``error_class`` returns ``result``: the earlier attempt may have
    committed, and this is what its success looks like now.
    """
    retrying = False
    for delay in [*retry.delays(), None]:
        try:
            return await make_call()
        except grpc.aio.AioRpcError as error:
            mapped = error_from_rpc(error)
            if retrying and done_if_retry_finds is not None:
                error_class, result = done_if_retry_finds
                if isinstance(mapped, error_class):
                    return result
            if delay is None or not isinstance(mapped, UnavailableError):
                raise mapped from error
        retrying = True
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
