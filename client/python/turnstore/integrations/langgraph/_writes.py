"""TurnstoreSaver's put and put_writes, and retention (on the client's loop)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    get_checkpoint_metadata,
)

from turnstore.errors import TurnstoreError, VersionConflictError
from turnstore.integrations.langgraph import _follow
from turnstore.integrations.langgraph._keys import (
    HEAD_CONTENT_TYPE,
    MARKER_CONTENT_TYPE,
    head_value,
    parse_head,
)
from turnstore.integrations.langgraph._records import Records
from turnstore.integrations.langgraph._store import (
    Operation,
    Save,
)
from turnstore.integrations.langgraph.errors import CheckpointConflictError

__all__ = ["Writes"]

logger = logging.getLogger("turnstore.integrations.langgraph")
# put_writes merges into one value per checkpoint under expected_version;
# parallel tasks of one step race for it, and the losers merge again.
MAX_WRITE_MERGES = 100
# The checkpoint sources with which LangGraph starts a branch the user asked for.
BRANCH_SOURCES = ("fork", "update")
# A run's configurable key asking for a branch from an older checkpoint
# (LangGraph resuming a superseded checkpoint does not mark its puts).
FORK_KEY = "turnstore_fork"


class Writes(Records):
    """Storing checkpoints and writes."""

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
        head_id = parse_head(head.data)[0] if head else None
        head_version = head.version if head else 0
        # A put continuing from a checkpoint that is no longer the head is a
        # stale or concurrent run, unless it is this very checkpoint again (a
        # retried put) or a branch asked for: LangGraph marks some ("fork",
        # "update"), the caller others (FORK_KEY in the run's configurable).
        if (
            parent_id is not None
            and head_id is not None
            and head_id not in (parent_id, checkpoint_id)
            and stored_metadata.get("source") not in BRANCH_SOURCES
            and not configurable.get(FORK_KEY)
            and not self.allow_forks
        ):
            raise CheckpointConflictError(
                f"thread {thread_id!r} (namespace {ns!r}) moved on to checkpoint {head_id}; "
                f"this checkpoint continues from {parent_id} (a stale or concurrent run). "
                f"To branch from an older checkpoint on purpose, run with "
                f'{{"configurable": {{"{FORK_KEY}": True, ...}}}}',
                head_version,
            )
        operations: list[Operation] = [
            Save(layout.checkpoint(thread_id, ns, checkpoint_id), data, content_type),
            Save(head_key, head_value(checkpoint_id, ns), HEAD_CONTENT_TYPE, head_version),
        ]
        run_id = stored_metadata.get("run_id")
        if isinstance(run_id, str) and run_id:
            operations.append(Save(layout.run_marker(thread_id, run_id), b"", MARKER_CONTENT_TYPE))
            operations.append(
                Save(
                    layout.run_entry(run_id, thread_id, ns, checkpoint_id),
                    ns.encode("utf-8"),
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
