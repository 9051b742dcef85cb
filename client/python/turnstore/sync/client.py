"""The blocking client of :mod:`turnstore.sync`: its loop thread and the calls run on it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Sequence,
)
from types import TracebackType
from typing import Any, TypeVar

from turnstore._auth import ClientTls
from turnstore._retry import RetryPolicy
from turnstore.admin import DaemonStats, KeyInfo, ThreadInfo
from turnstore.client import DEFAULT_TARGET, DEFAULT_TIMEOUT
from turnstore.client import TurnstoreClient as AsyncTurnstoreClient
from turnstore.events import WriteMode
from turnstore.history import BatchOperation
from turnstore.results import (
    BatchResult,
)
from turnstore.sync.stores import SyncEventStore, SyncHistoryStore

__all__ = ["ClientClosedError", "TurnstoreClient"]

T = TypeVar("T")


class ClientClosedError(RuntimeError):
    """A call on a :class:`TurnstoreClient` after (or during) its ``close()``."""


class TurnstoreClient:
    """A blocking connection to a turnstore daemon; use as ``with`` or call :meth:`close`.

    Takes the same arguments as the async :class:`turnstore.client.TurnstoreClient`
    (an invalid ``target`` raises InvalidArgumentError here, at once) and
    offers the same stores with blocking methods: ``events``
    (:class:`SyncEventStore`), ``history(key)`` (:class:`SyncHistoryStore`),
    plus the daemon's ``stats``, ``list_keys`` and ``list_threads``. Anything
    else of the async client is reached through :meth:`call` (a coroutine
    run on the façade's loop) and :meth:`iterate` (an async iterator read
    from this thread). ``async_client`` is the async client itself, for code
    that runs on the façade's loop (through :meth:`call`) only.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        token: str | None = None,
        tls: ClientTls | None = None,
        options: list[tuple[str, Any]] | None = None,
        write_mode: WriteMode = "stream",
        allow_remote: bool = False,
    ) -> None:
        self.target = target
        self._loop = asyncio.new_event_loop()
        self._closed = False
        # Guards _closed against a close() racing calls from other threads.
        self._state_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run_loop, name="turnstore-sync", daemon=True)
        self._thread.start()

        async def connect() -> AsyncTurnstoreClient:
            # The async client binds to the running loop: make it on ours.
            return AsyncTurnstoreClient(
                target,
                timeout=timeout,
                retry=retry,
                token=token,
                tls=tls,
                options=options,
                write_mode=write_mode,
                allow_remote=allow_remote,
            )

        try:
            self.async_client = self._submit(connect()).result()
        except BaseException:
            self._stop_loop()
            raise
        self.events = SyncEventStore(self)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the façade's loop and wait for its result."""
        if threading.get_ident() == self._thread.ident:
            coroutine.close()
            raise RuntimeError(
                "a turnstore.sync call from the façade's own loop thread would wait for "
                "itself: await the async client (client.async_client) there instead"
            )
        with self._state_lock:
            if self._closed:
                coroutine.close()
                raise ClientClosedError(
                    f"this turnstore.sync.TurnstoreClient ({self.target}) is closed"
                )
            future = self._submit(coroutine)
        return future.result()

    def call(self, function: Callable[[AsyncTurnstoreClient], Awaitable[T]]) -> T:
        """Await ``function(async_client)`` on the façade's loop and return its result.

        Its exceptions are raised here, unchanged.
        """

        async def run() -> T:
            return await function(self.async_client)

        return self._run(run())

    def iterate(
        self, function: Callable[[AsyncTurnstoreClient], AsyncIterable[T]]
    ) -> Generator[T, None, None]:
        """Iterate, from this thread, over ``function(async_client)`` run on the loop.

        Items are fetched one at a time as the iterator is advanced; closing
        the iterator (or leaving a ``for`` loop early) closes the async one.
        """
        return self._iterate(lambda: function(self.async_client))

    def _iterate(self, make: Callable[[], AsyncIterable[T]]) -> Generator[T, None, None]:
        async def start() -> tuple[AsyncIterable[T], AsyncIterator[T]]:
            # Made on the loop: a replay reads the running loop when made.
            iterable = make()
            return iterable, aiter(iterable)

        iterable, iterator = self._run(start())

        async def advance() -> tuple[bool, T | None]:
            try:
                return True, await anext(iterator)
            except StopAsyncIteration:
                return False, None

        finished = False
        try:
            while True:
                more, item = self._run(advance())
                if not more:
                    finished = True
                    return
                yield item  # type: ignore[misc]
        finally:
            # A Replay's own aclose cancels its call; a generator's closes it.
            aclose = getattr(iterable, "aclose", None) or getattr(iterator, "aclose", None)
            if not finished and aclose is not None and not self._closed:
                self._run(aclose())

    def history(self, key: str) -> SyncHistoryStore:
        """A blocking history store bound to the conversation ``key`` (non-empty)."""
        return SyncHistoryStore(self, key)

    def stats(self) -> DaemonStats:
        """The daemon's counters and what its database holds."""
        return self.call(lambda client: client.admin.stats())

    def list_keys(
        self,
        *,
        prefix: str = "",
        start_after: str = "",
        end_before: str = "",
        limit: int = 0,
        newest_first: bool = False,
    ) -> Generator[KeyInfo, None, None]:
        """The conversation keys holding a snapshot, as the async client's ``list_keys``."""
        return self.iterate(
            lambda client: client.list_keys(
                prefix=prefix,
                start_after=start_after,
                end_before=end_before,
                limit=limit,
                newest_first=newest_first,
            )
        )

    def batch(self, operations: Sequence[BatchOperation]) -> list[BatchResult]:
        """Saves and deletes across keys, all or nothing, as the async client's ``batch``."""
        return self.call(lambda client: client.batch(operations))

    def list_threads(self, start_after: str = "") -> Generator[ThreadInfo, None, None]:
        """Every thread, in the byte order of the UTF-8 ids, after ``start_after``."""
        return self.iterate(lambda client: client.admin.list_threads(start_after))

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the channel connects; raise UnavailableError after ``timeout``."""
        self.call(lambda client: client.wait_ready(timeout))

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The façade's event loop (running on its own thread), where ``async_client`` lives."""
        return self._loop

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Close the async client, stop the loop and join its thread. Idempotent.

        Calls in flight on other threads end with the async client's error
        for a closed channel; later calls raise ClientClosedError.
        """
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError("close() from the façade's own loop thread: call it from another")
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            future = self._submit(self.async_client.aclose())
        try:
            future.result()
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._closed = True

        async def settle() -> None:
            # Let what the closed channel left (gRPC's status tasks, a
            # cancelled stream's reader) finish, rather than be destroyed pending.
            current = asyncio.current_task()
            pending = [task for task in asyncio.all_tasks() if task is not current]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._submit(settle()).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> TurnstoreClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
