"""The small events TurnstoreSaver appends so that a UI can follow a graph live.

One event per stored checkpoint (``langgraph.checkpoint``) and one per
``put_writes`` call (``langgraph.writes``), appended to the event thread
``{key_prefix}{thread_id}`` (``langgraph/{thread_id}`` by default), turn 1,
with event ids derived from what they describe, so a retried put appends
nothing twice. A follower replays that thread with ``follow=True`` and
loads a checkpoint's full state through the saver when it needs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from turnstore.models import AgentEventEnvelope

# Values longer than this (as JSON) are left out of a writes event, which
# then says how long they were: events stay small, checkpoints hold the rest.
MAX_PREVIEW_BYTES = 4096
# The daemon's default event id limit is 256 bytes.
MAX_EVENT_ID_BYTES = 200
EVENT_TURN = 1


def event_id(*parts: str) -> str:
    """An event id naming what the event describes (hashed when too long)."""
    joined = ":".join(parts)
    if len(joined.encode("utf-8")) <= MAX_EVENT_ID_BYTES:
        return joined
    return f"{parts[0]}:sha256:{hashlib.sha256(joined.encode('utf-8')).hexdigest()}"


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, bytes):
        return {"bytes": len(value)}
    return repr(value)


def preview(value: Any) -> Any:
    """``value`` as JSON for a follower: LangChain messages as their fields, others as repr."""
    try:
        encoded = orjson.dumps(value, default=_jsonable, option=orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        encoded = orjson.dumps(repr(value))
    if len(encoded) > MAX_PREVIEW_BYTES:
        return {"omitted_json_bytes": len(encoded)}
    return orjson.loads(encoded)


def checkpoint_event(
    ns: str,
    checkpoint_id: str,
    parent_id: str | None,
    metadata: dict[str, Any],
    updated_channels: Sequence[str],
) -> AgentEventEnvelope:
    """The event announcing a stored checkpoint."""
    return AgentEventEnvelope(
        event_id("checkpoint", ns, checkpoint_id),
        0,
        _now(),
        {
            "type": "langgraph.checkpoint",
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
            "parent_checkpoint_id": parent_id,
            "step": metadata.get("step"),
            "source": metadata.get("source"),
            "run_id": metadata.get("run_id"),
            "updated_channels": sorted(updated_channels),
        },
    )


def writes_event(
    ns: str,
    checkpoint_id: str,
    task_id: str,
    task_path: str,
    writes: Sequence[tuple[int, str, Any]],
) -> AgentEventEnvelope:
    """The event announcing a task's writes against a checkpoint."""
    first = str(writes[0][0]) if writes else "none"
    return AgentEventEnvelope(
        event_id("writes", ns, checkpoint_id, task_id, first),
        0,
        _now(),
        {
            "type": "langgraph.writes",
            "checkpoint_ns": ns,
            "checkpoint_id": checkpoint_id,
            "task_id": task_id,
            "task_path": task_path,
            "writes": [
                {"channel": channel, "index": index, "value": preview(value)}
                for index, channel, value in writes
            ],
        },
    )


def _now() -> datetime:
    return datetime.now(UTC)
