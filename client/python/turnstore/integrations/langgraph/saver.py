"""``TurnstoreSaver``: LangGraph's ``BaseCheckpointSaver`` over a turnstore daemon.

What it stores where is in :mod:`turnstore.integrations.langgraph._keys`
(and docs/langgraph.md). Each checkpoint is one self-contained record (its
channel values inline), so deleting, pruning or copying never leaves a
checkpoint pointing at a value that is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Final, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from turnstore.client import TurnstoreClient as AsyncTurnstoreClient
from turnstore.errors import TurnstoreError, VersionConflictError
from turnstore.integrations.langgraph import _follow
from turnstore.integrations.langgraph._keys import (
    HEAD_CONTENT_TYPE,
    MARKER_CONTENT_TYPE,
    Layout,
    content_type_of,
    serde_type_of,
)
from turnstore.integrations.langgraph._store import (
    MAX_BATCH_OPERATIONS,
    Delete,
    DeletePrefix,
    KeyStore,
    Operation,
    Save,
)
from turnstore.results import Blob
from turnstore.sync import TurnstoreClient as SyncTurnstoreClient

__all__ = ["CheckpointConflictError", "TurnstoreSaver"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_KEY_PREFIX: Final = "langgraph/"
# put_writes merges into one value per checkpoint under expected_version;
# parallel tasks of one step race for it, and the losers merge again.
MAX_WRITE_MERGES = 100


class CheckpointConflictError(VersionConflictError):
    """A checkpoint was refused: the thread moved on since its writer read it.

    Raised by ``put`` when another writer advanced the namespace's head
    first (two runs on one thread), or when the checkpoint continues from
    one that is no longer the head (a stale or cancelled run) and the saver
    does not allow forks. Nothing was stored.
    """


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
    instead of overwriting newer state. ``allow_forks=True`` accepts the
    latter (LangGraph's time travel: running again from an old checkpoint),
    making the new checkpoint the head.

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
        self._store = KeyStore(self._async_client)
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

    async def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
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
        if self._owned is not None and self._owned.closed:
            coroutine.close()
            raise TurnstoreError("this TurnstoreSaver is closed")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    # -- values ---------------------------------------------------------------

    def _dump(self, value: Any) -> tuple[bytes, str]:
        serde_type, data = self.serde.dumps_typed(value)
        return data, content_type_of(serde_type)

    def _load(self, blob: Blob) -> Any:
        return self.serde.loads_typed((serde_type_of(blob.content_type), blob.data))

    # -- the operations (on the client's loop) -----------------------------------

    async def _put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        configurable = config["configurable"]
        thread_id: str = configurable["thread_id"]
        ns: str = configurable.get("checkpoint_ns", "")
        parent_id: str | None = configurable.get("checkpoint_id")
        checkpoint_id = checkpoint["id"]
        stored_metadata = get_checkpoint_metadata(config, metadata)
        data, content_type = self._dump(
            {"checkpoint": checkpoint, "metadata": stored_metadata, "parent": parent_id}
        )
        layout = self._layout
        head_key = layout.head(thread_id, ns)
        head = await self._store.load(head_key)
        head_id = head.data.decode("utf-8") if head else None
        head_version = head.version if head else 0
        # A put continuing from a checkpoint that is no longer the head, unless
        # it is this very checkpoint again (a retried put).
        if (
            parent_id is not None
            and head_id is not None
            and head_id not in (parent_id, checkpoint_id)
            and not self.allow_forks
        ):
            raise CheckpointConflictError(
                f"thread {thread_id!r} (namespace {ns!r}) moved on to checkpoint {head_id}; "
                f"this checkpoint continues from {parent_id} (a stale or concurrent run)",
                head_version,
            )
        operations: list[Operation] = [
            Save(layout.checkpoint(thread_id, ns, checkpoint_id), data, content_type),
            Save(head_key, checkpoint_id.encode("utf-8"), HEAD_CONTENT_TYPE, head_version),
        ]
        run_id = stored_metadata.get("run_id")
        if isinstance(run_id, str) and run_id:
            operations.append(Save(layout.run_marker(thread_id, run_id), b"", MARKER_CONTENT_TYPE))
            operations.append(
                Save(
                    layout.run_entry(run_id, thread_id, ns, checkpoint_id),
                    b"",
                    MARKER_CONTENT_TYPE,
                )
            )
        if self.keep_last is not None:
            operations += await self._retention(
                thread_id, ns, checkpoint_id, parent_id, dict(stored_metadata), checkpoint
            )
        try:
            await self._store.batch(operations)
        except VersionConflictError as error:
            raise CheckpointConflictError(
                f"thread {thread_id!r} (namespace {ns!r}) was advanced by another writer "
                f"while checkpoint {checkpoint_id} was being stored",
                error.current_version,
            ) from error
        if self.follow_events:
            await self._announce(
                thread_id,
                _follow.checkpoint_event(
                    ns, checkpoint_id, parent_id, dict(stored_metadata), list(new_versions)
                ),
            )
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": ns,
                "checkpoint_id": checkpoint_id,
            }
        }

    async def _announce(self, thread_id: str, event: Any) -> None:
        # The checkpoint is stored whatever happens here: a follower missing
        # one event still finds the state through the saver.
        try:
            await self._async_client.events.append(
                self.key_prefix + thread_id, _follow.EVENT_TURN, event
            )
        except TurnstoreError as error:
            logger.warning(
                "turnstore: could not append the follow event %s: %s", event.event_id, error
            )

    async def _put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str,
    ) -> None:
        configurable = config["configurable"]
        thread_id: str = configurable["thread_id"]
        ns: str = configurable.get("checkpoint_ns", "")
        checkpoint_id: str = configurable["checkpoint_id"]
        key = self._layout.writes(thread_id, ns, checkpoint_id)
        indexed = [
            (WRITES_IDX_MAP.get(channel, index), channel, value)
            for index, (channel, value) in enumerate(writes)
        ]
        for _ in range(MAX_WRITE_MERGES):
            stored = await self._store.load(key)
            entries: list[list[Any]] = self._load(stored) if stored else []
            present = {(entry[0], entry[1]) for entry in entries}
            changed = False
            for index, channel, value in indexed:
                # A regular write is stored once per (task, index); special ones
                # (errors, interrupts: negative indexes) replace the previous.
                if index >= 0 and (task_id, index) in present:
                    continue
                serde_type, data = self.serde.dumps_typed(value)
                entries = [e for e in entries if (e[0], e[1]) != (task_id, index)]
                entries.append([task_id, index, channel, serde_type, data, task_path])
                changed = True
            if not changed:
                return
            data, content_type = self._dump(entries)
            try:
                await self._store.batch(
                    [Save(key, data, content_type, stored.version if stored else 0)]
                )
                break
            except VersionConflictError:
                continue
        else:
            raise CheckpointConflictError(
                f"the writes of checkpoint {checkpoint_id} kept changing under "
                f"{MAX_WRITE_MERGES} attempts to merge task {task_id}'s"
            )
        if self.follow_events:
            await self._announce(
                thread_id,
                _follow.writes_event(ns, checkpoint_id, task_id, task_path, indexed),
            )

    async def _pending_writes(
        self, thread_id: str, ns: str, checkpoint_id: str
    ) -> list[tuple[str, str, Any]]:
        stored = await self._store.load(self._layout.writes(thread_id, ns, checkpoint_id))
        if stored is None:
            return []
        entries: list[list[Any]] = self._load(stored)
        entries.sort(key=lambda e: writes_sort_key(e[5], e[0], e[1]))
        return [(e[0], e[2], self.serde.loads_typed((e[3], e[4]))) for e in entries]

    async def _tuple(self, thread_id: str, ns: str, checkpoint_id: str) -> CheckpointTuple | None:
        stored = await self._store.load(self._layout.checkpoint(thread_id, ns, checkpoint_id))
        if stored is None:
            return None
        record = self._load(stored)
        parent_id = record["parent"]
        return CheckpointTuple(
            config={
                "configurable": {
                    "thread_id": thread_id,
                    "checkpoint_ns": ns,
                    "checkpoint_id": checkpoint_id,
                }
            },
            checkpoint=record["checkpoint"],
            metadata=record["metadata"],
            parent_config=(
                {
                    "configurable": {
                        "thread_id": thread_id,
                        "checkpoint_ns": ns,
                        "checkpoint_id": parent_id,
                    }
                }
                if parent_id
                else None
            ),
            pending_writes=await self._pending_writes(thread_id, ns, checkpoint_id),
        )

    async def _latest_id(self, thread_id: str, ns: str) -> str | None:
        prefix = self._layout.checkpoints(thread_id, ns)
        newest = await self._store.keys(prefix, newest_first=True, limit=1)
        return newest[0][len(prefix) :] if newest else None

    async def _get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        configurable = config["configurable"]
        thread_id: str = configurable["thread_id"]
        ns: str = configurable.get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config) or await self._latest_id(thread_id, ns)
        if checkpoint_id is None:
            return None
        return await self._tuple(thread_id, ns, checkpoint_id)

    async def _namespaces(self, thread_id: str) -> list[str]:
        heads = await self._store.keys(self._layout.heads(thread_id))
        return sorted(self._layout.ns_of_head(thread_id, key) for key in heads)

    async def _threads(self) -> list[str]:
        threads: list[str] = []
        for key in await self._store.keys(self._layout.prefix + "threads/"):
            thread_id = self._layout.thread_of(key)
            if not threads or threads[-1] != thread_id:
                threads.append(thread_id)
        return threads

    async def _list(
        self,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> list[CheckpointTuple]:
        found: list[CheckpointTuple] = []
        if limit is not None and limit <= 0:
            return found
        configurable = config["configurable"] if config else {}
        thread_ids = (
            [configurable["thread_id"]] if "thread_id" in configurable else await self._threads()
        )
        wanted_ns: str | None = configurable.get("checkpoint_ns")
        wanted_id = configurable.get("checkpoint_id")
        before_id = get_checkpoint_id(before) if before else None
        for thread_id in thread_ids:
            namespaces = [wanted_ns] if wanted_ns is not None else await self._namespaces(thread_id)
            for ns in namespaces:
                prefix = self._layout.checkpoints(thread_id, ns)
                if wanted_id:
                    ids = [wanted_id]
                else:
                    keys = await self._store.keys(
                        prefix,
                        newest_first=True,
                        end_before=prefix + before_id if before_id else "",
                        limit=0 if filter or limit is None else limit - len(found),
                    )
                    ids = [key[len(prefix) :] for key in keys]
                for checkpoint_id in ids:
                    if before_id and checkpoint_id >= before_id:
                        continue
                    loaded = await self._tuple(thread_id, ns, checkpoint_id)
                    if loaded is None:
                        continue
                    if filter and not all(loaded.metadata.get(k) == v for k, v in filter.items()):
                        continue
                    found.append(loaded)
                    if limit is not None and len(found) >= limit:
                        return found
        return found

    async def _delete_thread(self, thread_id: str) -> None:
        layout = self._layout
        operations: list[Operation] = [
            DeletePrefix(layout.run_in_thread(layout.run_of_marker(thread_id, key), thread_id))
            for key in await self._store.keys(layout.run_markers(thread_id))
        ]
        operations.append(DeletePrefix(layout.thread(thread_id)))
        await self._batches(operations)

    async def _batches(self, operations: list[Operation]) -> None:
        # One atomic batch when it fits the daemon's limit (the usual case).
        for start in range(0, len(operations), MAX_BATCH_OPERATIONS):
            await self._store.batch(operations[start : start + MAX_BATCH_OPERATIONS])

    def _checkpoint_deletes(
        self, thread_id: str, ns: str, checkpoint_id: str, run_id: Any
    ) -> list[Operation]:
        layout = self._layout
        operations: list[Operation] = [
            Delete(layout.checkpoint(thread_id, ns, checkpoint_id)),
            Delete(layout.writes(thread_id, ns, checkpoint_id)),
        ]
        if isinstance(run_id, str) and run_id:
            operations.append(Delete(layout.run_entry(run_id, thread_id, ns, checkpoint_id)))
        return operations

    async def _head_after(self, thread_id: str, ns: str, deleted: set[str]) -> list[Operation]:
        """The head of a namespace once ``deleted`` checkpoints are gone (as operations)."""
        prefix = self._layout.checkpoints(thread_id, ns)
        keys = await self._store.keys(prefix, newest_first=True, limit=len(deleted) + 1)
        remaining = [key[len(prefix) :] for key in keys if key[len(prefix) :] not in deleted]
        head_key = self._layout.head(thread_id, ns)
        if remaining:
            return [Save(head_key, remaining[0].encode("utf-8"), HEAD_CONTENT_TYPE)]
        return [Delete(head_key)]

    async def _delete_for_runs(self, run_ids: Sequence[str]) -> None:
        layout = self._layout
        for run_id in run_ids:
            by_namespace: dict[tuple[str, str], set[str]] = {}
            operations: list[Operation] = []
            for key in await self._store.keys(layout.run(run_id)):
                thread_id, ns, checkpoint_id = layout.parse_run_entry(run_id, key)
                by_namespace.setdefault((thread_id, ns), set()).add(checkpoint_id)
                operations += self._checkpoint_deletes(thread_id, ns, checkpoint_id, run_id)
            for thread_id in {thread for thread, _ in by_namespace}:
                operations.append(Delete(layout.run_marker(thread_id, run_id)))
            for (thread_id, ns), deleted in by_namespace.items():
                operations += await self._head_after(thread_id, ns, deleted)
            if operations:
                await self._batches(operations)

    async def _copy_thread(self, source: str, target: str) -> None:
        layout = self._layout
        source_prefix = layout.thread(source)
        target_prefix = layout.thread(target)
        operations: list[Operation] = []
        for key in await self._store.keys(source_prefix):
            blob = await self._store.load(key)
            if blob is None:
                continue
            rest = key[len(source_prefix) :]
            operations.append(Save(target_prefix + rest, blob.data, blob.content_type))
            if rest.startswith("c/"):
                ns_part, checkpoint_id = rest[2:].split("/")
                record = self._load(blob)
                run_id = record["metadata"].get("run_id")
                if isinstance(run_id, str) and run_id:
                    ns = layout.ns_of_head(target, layout.heads(target) + ns_part)
                    operations.append(
                        Save(
                            layout.run_entry(run_id, target, ns, checkpoint_id),
                            b"",
                            MARKER_CONTENT_TYPE,
                        )
                    )
        if operations:
            await self._batches(operations)

    async def _delta_ancestors(
        self,
        thread_id: str,
        ns: str,
        metadata: dict[str, Any],
        checkpoint: Checkpoint,
        parent: str | None,
    ) -> set[str]:
        """The ancestors a kept checkpoint's DeltaChannels are rebuilt from.

        A DeltaChannel leaves its value out of most checkpoints (the metadata's
        ``counters_since_delta_snapshot`` names such channels); it is rebuilt
        from the writes of the ancestors back to the nearest one holding its
        snapshot. Those ancestors (from ``parent`` up) must stay.
        """
        needed = {
            channel
            for channel in (metadata.get("counters_since_delta_snapshot") or {})
            if channel not in checkpoint["channel_values"]
        }
        kept: set[str] = set()
        while needed and parent:
            stored = await self._store.load(self._layout.checkpoint(thread_id, ns, parent))
            if stored is None:
                break
            record = self._load(stored)
            kept.add(parent)
            needed -= set(record["checkpoint"]["channel_values"])
            parent = record["parent"]
        return kept

    async def _retention(
        self,
        thread_id: str,
        ns: str,
        checkpoint_id: str,
        parent_id: str | None,
        metadata: dict[str, Any],
        checkpoint: Checkpoint,
    ) -> list[Operation]:
        """The deletes that keep a namespace at ``keep_last`` once ``checkpoint_id`` is put."""
        assert self.keep_last is not None
        prefix = self._layout.checkpoints(thread_id, ns)
        # Normally one checkpoint is over the bound; a few more are read in
        # case an earlier put's deletes were held back (a DeltaChannel's).
        keys = await self._store.keys(prefix, newest_first=True, limit=self.keep_last + 32)
        ids = [key[len(prefix) :] for key in keys if key[len(prefix) :] != checkpoint_id]
        keep, surplus = ids[: self.keep_last - 1], ids[self.keep_last - 1 :]
        if not surplus:
            return []
        if keep:
            oldest = await self._tuple(thread_id, ns, keep[-1])
            if oldest is None:
                return []
            protected = await self._delta_ancestors(
                thread_id,
                ns,
                dict(oldest.metadata),
                oldest.checkpoint,
                oldest.parent_config["configurable"]["checkpoint_id"]
                if oldest.parent_config
                else None,
            )
        else:
            protected = await self._delta_ancestors(thread_id, ns, metadata, checkpoint, parent_id)
        return await self._deletes_of(thread_id, ns, [i for i in surplus if i not in protected])

    async def _all_ids(self, thread_id: str, ns: str) -> list[str]:
        prefix = self._layout.checkpoints(thread_id, ns)
        return [key[len(prefix) :] for key in await self._store.keys(prefix)]

    async def _deletes_of(
        self, thread_id: str, ns: str, checkpoint_ids: list[str]
    ) -> list[Operation]:
        operations: list[Operation] = []
        for checkpoint_id in checkpoint_ids:
            stored = await self._store.load(self._layout.checkpoint(thread_id, ns, checkpoint_id))
            run_id = self._load(stored)["metadata"].get("run_id") if stored else None
            operations += self._checkpoint_deletes(thread_id, ns, checkpoint_id, run_id)
        return operations

    async def _prune(self, thread_ids: Sequence[str], strategy: str) -> None:
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"prune strategy must be 'keep_latest' or 'delete', not {strategy!r}")
        for thread_id in thread_ids:
            if strategy == "delete":
                await self._delete_thread(thread_id)
                continue
            operations: list[Operation] = []
            for ns in await self._namespaces(thread_id):
                ids = sorted(await self._all_ids(thread_id, ns), reverse=True)
                if len(ids) <= 1:
                    continue
                latest = await self._tuple(thread_id, ns, ids[0])
                if latest is None:
                    continue
                protected = await self._delta_ancestors(
                    thread_id,
                    ns,
                    dict(latest.metadata),
                    latest.checkpoint,
                    latest.parent_config["configurable"]["checkpoint_id"]
                    if latest.parent_config
                    else None,
                )
                operations += await self._deletes_of(
                    thread_id, ns, [i for i in ids[1:] if i not in protected]
                )
                # The head stays: it is the latest checkpoint, which is kept.
            if operations:
                await self._batches(operations)

    # -- BaseCheckpointSaver: async -----------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its ``checkpoint_id``, else the latest), or None."""
        return await self._on_loop(self._get_tuple(config))

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Checkpoints newest first: of ``config``'s thread (and namespace, when given)."""
        for found in await self._on_loop(self._list(config, filter, before, limit)):
            yield found

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store ``checkpoint`` and advance its namespace's head; see the class."""
        return await self._on_loop(self._put(config, checkpoint, metadata, new_versions))

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes against the checkpoint ``config`` names (idempotent)."""
        await self._on_loop(self._put_writes(config, writes, task_id, task_path))

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint and write of a thread (one atomic prefix delete)."""
        await self._on_loop(self._delete_thread(thread_id))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and writes) of these runs, in every thread."""
        await self._on_loop(self._delete_for_runs(run_ids))

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint and write of a thread (the whole parent chain) to another."""
        await self._on_loop(self._copy_thread(source_thread_id, target_thread_id))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``keep_latest``: keep each namespace's latest checkpoint; ``delete``: delete all."""
        await self._on_loop(self._prune(thread_ids, strategy))

    # -- BaseCheckpointSaver: sync ------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """As :meth:`aget_tuple`, blocking."""
        return self._blocking(self._get_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """As :meth:`alist`, blocking."""
        return iter(self._blocking(self._list(config, filter, before, limit)))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """As :meth:`aput`, blocking."""
        return self._blocking(self._put(config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """As :meth:`aput_writes`, blocking."""
        self._blocking(self._put_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        """As :meth:`adelete_thread`, blocking."""
        self._blocking(self._delete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """As :meth:`adelete_for_runs`, blocking."""
        self._blocking(self._delete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """As :meth:`acopy_thread`, blocking."""
        self._blocking(self._copy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """As :meth:`aprune`, blocking."""
        self._blocking(self._prune(thread_ids, strategy))


def _loop_thread_is_current(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
