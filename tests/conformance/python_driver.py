"""The Python client's driver of the cross-language conformance run (see README.md).

Usage: ``python tests/conformance/python_driver.py STEPS_FILE TARGET``. STEPS_FILE
holds the rendered steps (a JSON list: thread ids and keys made unique, events and
snapshots written out); each step is executed through the public ``turnstore``
client and its outcome printed as one JSON line ``{"step": i, "outcome": {...}}``.
With ``TURNSTORE_WRITE_MODE=unary`` the client writes with unary calls instead
of its shared append stream.
An error is an outcome: the client's error class, turned back into the proto's
ErrorReason string by ERROR_REASONS.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from typing import Any

from turnstore import (
    AgentEventEnvelope,
    BatchDelete,
    BatchDeletePrefix,
    BatchSave,
    CaughtUp,
    ConversationSnapshot,
    CursorOutOfRangeError,
    DeadlineExceededError,
    EventIdConflictError,
    FollowerTooSlowError,
    InvalidArgumentError,
    PermissionDeniedError,
    StorageFullError,
    StoredEvent,
    StoredTurnEvents,
    ThreadCleared,
    ThreadClearedError,
    TurnAlreadyFinishedError,
    TurnFinished,
    TurnFinishedError,
    TurnstoreClient,
    TurnstoreError,
    UnauthenticatedError,
    UnavailableError,
    VersionConflictError,
)
from turnstore.events import WriteMode

# The client's error kinds (its classes), most specific first, as reason strings.
ERROR_REASONS: list[tuple[type[TurnstoreError], str]] = [
    (InvalidArgumentError, "invalid_argument"),
    (TurnFinishedError, "turn_finished"),
    (TurnAlreadyFinishedError, "turn_already_finished"),
    (EventIdConflictError, "event_id_conflict"),
    (VersionConflictError, "version_conflict"),
    (ThreadClearedError, "thread_cleared"),
    (CursorOutOfRangeError, "cursor_out_of_range"),
    (StorageFullError, "storage_full"),
    (FollowerTooSlowError, "follower_too_slow"),
    (UnauthenticatedError, "unauthenticated"),
    (PermissionDeniedError, "permission_denied"),
    (UnavailableError, "unavailable"),
    (DeadlineExceededError, "deadline_exceeded"),
]


def error_outcome(error: TurnstoreError) -> dict[str, Any]:
    """The outcome of a failed step: its reason string (and a conflict's current version)."""
    reason = next(
        (reason for kind, reason in ERROR_REASONS if isinstance(error, kind)),
        f"other:{type(error).__name__}",
    )
    outcome: dict[str, Any] = {"error": reason}
    if isinstance(error, VersionConflictError):
        outcome["current_version"] = error.current_version
    return outcome


def turn_json(turn: StoredTurnEvents) -> dict[str, Any]:
    return {
        "turn": turn.turn,
        "finished": turn.finished,
        "events": [e.to_json_dict() for e in turn.events],
    }


def batch_operation(operation: dict[str, Any]) -> BatchSave | BatchDelete | BatchDeletePrefix:
    """A scenario's batch operation ({"save"|"delete"|"delete_prefix": {...}}) as the client's."""
    if "save" in operation:
        save = operation["save"]
        data = base64.b64decode(save["data_base64"])
        return BatchSave(save["key"], data, save["content_type"], save.get("expected_version"))
    if "delete" in operation:
        return BatchDelete(operation["delete"]["key"], operation["delete"].get("expected_version"))
    return BatchDeletePrefix(operation["delete_prefix"]["prefix"])


class PythonDriver:
    """Executes steps on one client; keeps the replay cursors steps save by name."""

    def __init__(self, client: TurnstoreClient) -> None:
        self.client = client
        self.cursors: dict[str, tuple[int | None, int | None]] = {}

    async def run(self, step: dict[str, Any]) -> dict[str, Any]:
        events, op = self.client.events, step["op"]
        if op == "append":
            envelope = AgentEventEnvelope.from_json_dict(step["event"])
            return {"position": await events.append(step["thread"], step["turn"], envelope)}
        if op == "append_many":
            envelopes = [AgentEventEnvelope.from_json_dict(e) for e in step["events"]]
            return {"positions": await events.append_many(step["thread"], step["turn"], envelopes)}
        if op == "finish_turn":
            await events.finish_turn(step["thread"], step["turn"])  # its result is not compared
            return {}
        if op == "get_turn":
            turn = await events.get_turn(step["thread"], step["turn"])
            return {"turn": None if turn is None else turn_json(turn)}
        if op == "get_turns":
            return {"turns": [turn_json(t) for t in await events.get_turns(step["thread"])]}
        if op == "get_events":
            found = await events.get_events(step["thread"])
            return {"events": [e.to_json_dict() for e in found]}
        if op == "get_events_since":
            found = await events.get_events_since(step["thread"], step["offset"])
            return {"events": [e.to_json_dict() for e in found]}
        if op == "event_count":
            return {"count": await events.event_count(step["thread"])}
        if op == "clear":
            await events.clear(step["thread"])  # its result is not compared
            return {}
        if op == "replay":
            return await self.replay(step)
        if op == "save":
            snapshot = ConversationSnapshot.from_json_dict(step["snapshot"])
            history = self.client.history(step["key"])
            version = await history.save_versioned(snapshot, step.get("expected_version"))
            return {"version": version}
        if op == "load":
            loaded = await self.client.history(step["key"]).load_versioned()
            if loaded is None:
                return {"snapshot": None, "version": None}
            return {"snapshot": loaded.snapshot.to_json_dict(), "version": loaded.version}
        if op == "save_bytes":
            data = base64.b64decode(step["data_base64"])
            history = self.client.history(step["key"])
            expected = step.get("expected_version")
            return {"version": await history.save_bytes(data, step["content_type"], expected)}
        if op == "load_bytes":
            blob = await self.client.history(step["key"]).load_bytes()
            if blob is None:
                return {"blob": None}
            return {
                "data_base64": base64.b64encode(blob.data).decode("ascii"),
                "content_type": blob.content_type,
                "version": blob.version,
            }
        if op == "list_keys":
            prefix = step.get("prefix", "")
            listed = self.client.list_keys(
                prefix=prefix,
                start_after=step.get("start_after", ""),
                end_before=step.get("end_before", ""),
                limit=step.get("limit", 0),
                newest_first=step.get("newest_first", False),
            )
            keys = [{"key": k.key[len(prefix) :], "version": k.version} async for k in listed]
            return {"keys": keys}
        if op == "batch":
            results = await self.client.batch([batch_operation(o) for o in step["operations"]])
            return {
                "results": [
                    {
                        "version": r.version,
                        "removed_versions": r.removed_versions,
                        "removed_keys": r.removed_keys,
                    }
                    for r in results
                ]
            }
        return {"unsupported": op}

    async def replay(self, step: dict[str, Any]) -> dict[str, Any]:
        after, epoch = self.cursors[step["cursor"]] if "cursor" in step else (None, None)
        after = step.get("after", after)
        items: list[dict[str, Any]] = []
        async with self.client.events.replay(step["thread"], after, epoch=epoch) as replay:
            async for item in replay:
                if isinstance(item, StoredEvent):
                    event = item.envelope.to_json_dict()
                    items.append({"position": item.position, "turn": item.turn, "event": event})
                elif isinstance(item, TurnFinished):
                    items.append(
                        {
                            "turn_finished": item.turn,
                            "event_count": item.event_count,
                            "last_position": item.last_position,
                        }
                    )
                elif isinstance(item, CaughtUp):
                    items.append({"caught_up": item.next_position})
                elif isinstance(item, ThreadCleared):
                    items.append({"thread_cleared": item.next_position})
        if "save_cursor" in step:
            self.cursors[step["save_cursor"]] = (replay.last_position, replay.epoch)
        return {"items": items, "last_position": replay.last_position}


async def main(steps: list[dict[str, Any]], target: str) -> None:
    write_mode: WriteMode = (
        "unary" if os.environ.get("TURNSTORE_WRITE_MODE") == "unary" else "stream"
    )
    async with TurnstoreClient(target, write_mode=write_mode) as client:
        await client.wait_ready()
        driver = PythonDriver(client)
        for index, step in enumerate(steps):
            try:
                outcome = await driver.run(step)
            except TurnstoreError as error:
                outcome = error_outcome(error)
            print(json.dumps({"step": index, "outcome": outcome}, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python_driver.py STEPS_FILE TARGET")
    with open(sys.argv[1], encoding="utf-8") as file:
        rendered_steps: list[dict[str, Any]] = json.load(file)
    asyncio.run(main(rendered_steps, sys.argv[2]))
