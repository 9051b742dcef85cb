"""``TurnstoreSaver``: LangGraph's ``BaseCheckpointSaver`` over a turnstore daemon.

What it stores where is in :mod:`turnstore.integrations.langgraph._keys`
(and docs/langgraph.md). Each checkpoint is one self-contained record (its
channel values inline), so deleting, pruning or copying never leaves a
checkpoint pointing at a value that is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Final, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from turnstore.client import TurnstoreClient as AsyncTurnstoreClient
from turnstore.integrations.langgraph._keys import Layout
from turnstore.integrations.langgraph._maintenance import Operations
from turnstore.sync import ClientClosedError
from turnstore.sync import TurnstoreClient as SyncTurnstoreClient

__all__ = ["TurnstoreSaver"]

T = TypeVar("T")

DEFAULT_KEY_PREFIX: Final = "langgraph/"


class TurnstoreSaver(BaseCheckpointSaver[int]):
    """A LangGraph checkpointer (sync and async) storing in a turnstore daemon.

    Construct it with ``target`` (it then makes and owns a
    :class:`turnstore.sync.TurnstoreClient`, closed by :meth:`close` or by
    leaving ``with``), with ``client`` (a sync façade, or an async
    :class:`turnstore.client.TurnstoreClient` made on the running loop:
    then the async methods are the ones to use, and the sync ones work only
    from other threads), or use ``async with TurnstoreSaver.from_target(t)``.

    Each namespace of a thread has a head, the id of its newest checkpoint,
    advanced in the same atomic write as the checkpoint and only from the
    version its writer read: two writers continuing one thread cannot both
    succeed, and a put continuing from a checkpoint that is no longer the
    head (a cancelled or stale run) raises :class:`CheckpointConflictError`
    instead of overwriting newer state. Branches asked for are accepted and
    become the head: those LangGraph marks (``update_state`` on an older
    checkpoint writes an ``"update"`` one, time travel with new input a
    ``"fork"`` one) and runs whose configurable holds
    ``"turnstore_fork": True`` (say, resuming a superseded interrupt).
    ``allow_forks=True`` accepts any put from an older checkpoint, as
    LangGraph's other savers do.

    ``keep_last`` (None: keep all) bounds each namespace to its newest N
    checkpoints, older ones (and their writes) deleted as new ones are put,
    except the ancestors a DeltaChannel still needs. ``follow_events``
    appends a small event per checkpoint and per task's writes to the event
    thread ``{key_prefix}{thread_id}``, for a UI to replay live.
    """

    def __init__(
        self,
        *,
        target: str | None = None,
        client: SyncTurnstoreClient | AsyncTurnstoreClient | None = None,
        serde: SerializerProtocol | None = None,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        keep_last: int | None = None,
        allow_forks: bool = False,
        follow_events: bool = True,
    ) -> None:
        super().__init__(serde=serde)
        if (target is None) == (client is None):
            raise ValueError("TurnstoreSaver: give exactly one of target= and client=")
        if keep_last is not None and keep_last < 1:
            raise ValueError("keep_last must be at least 1 (or None: keep every checkpoint)")
        if not key_prefix:
            raise ValueError("key_prefix must not be empty")
        self._owned: SyncTurnstoreClient | None = None
        if target is not None:
            client = self._owned = SyncTurnstoreClient(target)
        self._facade = client if isinstance(client, SyncTurnstoreClient) else None
        if isinstance(client, SyncTurnstoreClient):
            self._async_client = client.async_client
            self._loop = client.loop
        else:
            assert client is not None
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                raise ValueError(
                    "TurnstoreSaver(client=<async TurnstoreClient>) must be made on that "
                    "client's running event loop; pass a turnstore.sync.TurnstoreClient "
                    "(or target=) for sync use"
                ) from None
            self._async_client = client
        self._layout = Layout(key_prefix)
        self.key_prefix = key_prefix
        self.keep_last = keep_last
        self.allow_forks = allow_forks
        self.follow_events = follow_events

    @classmethod
    @asynccontextmanager
    async def from_target(cls, target: str, **options: Any) -> AsyncIterator[TurnstoreSaver]:
        """``async with TurnstoreSaver.from_target(target) as saver``: a saver on its own client.

        The async client is made on the running loop and closed on leaving;
        ``options`` are the constructor's (serde, key_prefix, keep_last, ...).
        """
        async with AsyncTurnstoreClient(target) as client:
            yield cls(client=client, **options)

    def close(self) -> None:
        """Close the client the saver made from ``target`` (no-op otherwise). Idempotent."""
        if self._owned is not None:
            self._owned.close()

    def __enter__(self) -> TurnstoreSaver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- running on the client's loop -------------------------------------------

    def _check_open(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        if self._facade is not None and self._facade.closed:
            coroutine.close()
            raise ClientClosedError("this TurnstoreSaver's client is closed")
        if not self._loop.is_running():
            # Scheduled there, the call would wait forever.
            coroutine.close()
            raise RuntimeError(
                "the event loop of this TurnstoreSaver's async client is not running "
                "(its asyncio.run ended?): use the saver inside that loop"
            )

    async def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        self._check_open(coroutine)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - always inside a loop here
            running = None
        if running is self._loop:
            return await coroutine
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self._loop))

    def _blocking(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_running() and _loop_thread_is_current(self._loop):
            coroutine.close()
            raise RuntimeError(
                "a sync TurnstoreSaver method was called on the event loop its async client "
                "runs on: use the async methods (aput, aget_tuple, ...) there"
            )
        self._check_open(coroutine)
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _ops(self) -> Operations:
        # Made per call from the saver's current attributes: with_allowlist()
        # makes a copy of the saver with another serde.
        return Operations(
            self._async_client,
            self._layout,
            self.serde,
            key_prefix=self.key_prefix,
            keep_last=self.keep_last,
            allow_forks=self.allow_forks,
            follow_events=self.follow_events,
        )

    # -- BaseCheckpointSaver: async -----------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its ``checkpoint_id``, else the latest), or None."""
        return await self._on_loop(self._ops()._get_tuple(config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Checkpoints newest first: of ``config``'s thread (and namespace, when given)."""
        for found in await self._on_loop(self._ops()._list(config, filter, before, limit)):
            yield found

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store ``checkpoint`` and advance its namespace's head; see the class."""
        return await self._on_loop(self._ops()._put(config, checkpoint, metadata, new_versions))

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes against the checkpoint ``config`` names (idempotent)."""
        await self._on_loop(self._ops()._put_writes(config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint and write of a thread (one atomic prefix delete)."""
        await self._on_loop(self._ops()._delete_thread(thread_id))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and writes) of these runs, in every thread."""
        await self._on_loop(self._ops()._delete_for_runs(run_ids))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint and write of a thread (the whole parent chain) to another."""
        await self._on_loop(self._ops()._copy_thread(source_thread_id, target_thread_id))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``keep_latest``: keep each namespace's latest checkpoint; ``delete``: delete all."""
        await self._on_loop(self._ops()._prune(thread_ids, strategy))

    # -- BaseCheckpointSaver: sync ------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """As :meth:`aget_tuple`, blocking."""
        return self._blocking(self._ops()._get_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """As :meth:`alist`, blocking."""
        return iter(self._blocking(self._ops()._list(config, filter, before, limit)))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """As :meth:`aput`, blocking."""
        return self._blocking(self._ops()._put(config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """As :meth:`aput_writes`, blocking."""
        self._blocking(self._ops()._put_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        """As :meth:`adelete_thread`, blocking."""
        self._blocking(self._ops()._delete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """As :meth:`adelete_for_runs`, blocking."""
        self._blocking(self._ops()._delete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """As :meth:`acopy_thread`, blocking."""
        self._blocking(self._ops()._copy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """As :meth:`aprune`, blocking."""
        self._blocking(self._ops()._prune(thread_ids, strategy))


def _loop_thread_is_current(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
