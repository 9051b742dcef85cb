"""TurnstoreSaver's reads, and the helpers its writes share (on the client's loop).

:class:`Records` holds what one call needs: the key store, the layout, the
serde and the saver's options, taken from the saver at each call (a saver's
``serde`` may be replaced, as ``with_allowlist`` does).
"""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    Checkpoint,
    CheckpointTuple,
    get_checkpoint_id,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from turnstore.client import TurnstoreClient
from turnstore.integrations.langgraph._keys import (
    Layout,
    content_type_of,
    parse_head,
    serde_type_of,
)
from turnstore.integrations.langgraph._store import (
    MAX_BATCH_OPERATIONS,
    Delete,
    KeyStore,
    Operation,
)
from turnstore.results import Blob

__all__ = ["Records"]


class Records:
    """The stored checkpoints of one saver, read and written on the client's loop."""

    def __init__(
        self,
        client: TurnstoreClient,
        layout: Layout,
        serde: SerializerProtocol,
        *,
        key_prefix: str,
        keep_last: int | None,
        allow_forks: bool,
        follow_events: bool,
    ) -> None:
        self._async_client = client
        self._store = KeyStore(client)
        self._layout = layout
        self.serde = serde
        self.key_prefix = key_prefix
        self.keep_last = keep_last
        self.allow_forks = allow_forks
        self.follow_events = follow_events

    def _dump(self, value: Any) -> tuple[bytes, str]:
        serde_type, data = self.serde.dumps_typed(value)
        return data, content_type_of(serde_type)

    def _load(self, blob: Blob) -> Any:
        return self.serde.loads_typed((serde_type_of(blob.content_type), blob.data))

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
        namespaces: list[str] = []
        for key in await self._store.keys(self._layout.heads(thread_id)):
            ns = self._layout.ns_of_head(thread_id, key)
            if ns is None:  # hashed in the key: the head's value names it
                head = await self._store.load(key)
                if head is None:
                    continue
                ns = parse_head(head.data)[1]
            namespaces.append(ns)
        return sorted(namespaces)

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
