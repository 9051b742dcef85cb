"""TurnstoreSaver's deletes, copies and prunes (on the client's loop)."""

from __future__ import annotations

from collections.abc import Sequence

from turnstore.integrations.langgraph._keys import (
    HEAD_CONTENT_TYPE,
    head_value,
)
from turnstore.integrations.langgraph._store import (
    Delete,
    DeletePrefix,
    Operation,
    Save,
)
from turnstore.integrations.langgraph._writes import Writes

__all__ = ["Operations"]


class Operations(Writes):
    """Every operation of the saver: reads, writes, deletes, copies and prunes."""

    async def _delete_thread(self, thread_id: str) -> None:
        layout = self._layout
        operations: list[Operation] = [
            DeletePrefix(layout.run_in_thread(layout.run_of_marker(thread_id, key), thread_id))
            for key in await self._store.keys(layout.run_markers(thread_id))
        ]
        operations.append(DeletePrefix(layout.thread(thread_id)))
        await self._batches(operations)
        if self.follow_events:
            # The follow events describe what was deleted: they go too (after
            # the keys, so a follower never sees events of a thread still there).
            await self._async_client.events.clear(self.key_prefix + thread_id)

    async def _head_after(self, thread_id: str, ns: str, deleted: set[str]) -> list[Operation]:
        """The head of a namespace once ``deleted`` checkpoints are gone (as operations)."""
        prefix = self._layout.checkpoints(thread_id, ns)
        keys = await self._store.keys(prefix, newest_first=True, limit=len(deleted) + 1)
        remaining = [key[len(prefix) :] for key in keys if key[len(prefix) :] not in deleted]
        head_key = self._layout.head(thread_id, ns)
        if remaining:
            return [Save(head_key, head_value(remaining[0], ns), HEAD_CONTENT_TYPE)]
        return [Delete(head_key)]

    async def _delete_for_runs(self, run_ids: Sequence[str]) -> None:
        layout = self._layout
        for run_id in run_ids:
            by_namespace: dict[tuple[str, str], set[str]] = {}
            operations: list[Operation] = []
            for key in await self._store.keys(layout.run(run_id)):
                thread_id, named, checkpoint_id = layout.parse_run_entry(run_id, key)
                if named is None:  # hashed in the key: the entry's value names it
                    entry = await self._store.load(key)
                    if entry is None:
                        continue
                    named = entry.data.decode("utf-8")
                ns = named
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
        copies: list[tuple[str, str]] = [(layout.thread(source), layout.thread(target))]
        # The run index entries of the source's runs, for delete_for_runs on the copy.
        copies += [
            (
                layout.run_in_thread(layout.run_of_marker(source, key), source),
                layout.run_in_thread(layout.run_of_marker(source, key), target),
            )
            for key in await self._store.keys(layout.run_markers(source))
        ]
        operations: list[Operation] = []
        for source_prefix, target_prefix in copies:
            for key in await self._store.keys(source_prefix):
                blob = await self._store.load(key)
                if blob is not None:
                    rest = key[len(source_prefix) :]
                    operations.append(Save(target_prefix + rest, blob.data, blob.content_type))
        if operations:
            await self._batches(operations)

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
