"""The checks every storage engine makes of its callers' input, in one place.

Both engines (LMDB and PostgreSQL) raise the same InvalidArgumentError, naming
the same field, for the same input, at once rather than through a write's
future: :class:`InputChecks` is mixed into each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from turnstore.server.storage.batches import (
    BatchOp,
    DeleteOp,
    SaveOp,
    at_operation,
    check_batch_size,
    encoded_prefix,
)
from turnstore.server.storage.config import Limits
from turnstore.server.storage.errors import InvalidArgumentError, TurnTooLargeError
from turnstore.server.storage.values import NewEvent

MAX_U64: Final = (1 << 64) - 1
# A snapshot's content type is stored with a one-byte length.
MAX_SNAPSHOT_CONTENT_TYPE_BYTES: Final = 255


class InputChecks:
    """Encode and check ids, turns, appends and snapshots against ``limits``."""

    limits: Limits

    @staticmethod
    def _utf8(name: str, value: str, limit: int) -> bytes:
        """``value`` as UTF-8 (lone surrogates kept); refused when empty or over ``limit``."""
        if not value:
            raise InvalidArgumentError(name, "must not be empty")
        encoded = value.encode("utf-8", "surrogatepass")
        if len(encoded) > limit:
            raise InvalidArgumentError(
                name, f"is {len(encoded)} bytes of UTF-8, over the limit of {limit}"
            )
        return encoded

    def _thread_key(self, thread_id: str) -> bytes:
        return self._utf8("thread_id", thread_id, self.limits.max_thread_id_bytes)

    def _conversation_key(self, key: str) -> bytes:
        return self._utf8("key", key, self.limits.max_key_bytes)

    @staticmethod
    def _check_turn(turn: int) -> None:
        """Turns (and snapshot versions) are unsigned 64-bit."""
        if not 0 <= turn <= MAX_U64:
            raise InvalidArgumentError("turn", f"must be between 0 and {MAX_U64}")

    def _checked_events(
        self, events: Sequence[NewEvent], finish: bool
    ) -> list[tuple[bytes, bytes]]:
        """An append's events as (id, envelope) bytes; refused when empty without
        ``finish``, too many, or with an id or an envelope over its limit."""
        limits = self.limits
        if not events and not finish:
            raise InvalidArgumentError("events", "must hold at least one event")
        if len(events) > limits.max_events_per_append:
            raise InvalidArgumentError(
                "events",
                f"holds {len(events)} events, over the limit of "
                f"{limits.max_events_per_append} per append",
            )
        encoded = [
            (event.event_id.encode("utf-8", "surrogatepass"), event.envelope) for event in events
        ]
        max_id, max_event = limits.max_event_id_bytes, limits.max_event_bytes
        for index, (event_id, envelope) in enumerate(encoded):
            if not event_id or len(event_id) > max_id or len(envelope) > max_event:
                self._utf8(f"events[{index}].event_id", events[index].event_id, max_id)
                raise InvalidArgumentError(
                    f"events[{index}]",
                    f"is {len(envelope)} bytes encoded, over the limit of {max_event}",
                )
        return encoded

    def _checked_snapshot(self, data: bytes, content_type: str) -> bytes:
        """A snapshot's content type as UTF-8; refused when it or ``data`` is over its limit,
        or when the content type holds a NUL character.

        Whether ``data`` labelled JSON is JSON is checked before, off the
        event loop (:func:`turnstore.server.api.bodies.check_json_snapshot`).
        """
        if len(data) > self.limits.max_snapshot_bytes:
            raise InvalidArgumentError(
                "data",
                f"is {len(data)} bytes, over the snapshot limit of "
                f"{self.limits.max_snapshot_bytes}",
            )
        if "\0" in content_type:
            # PostgreSQL's text columns cannot hold NUL: refused on every
            # backend so that both accept the same input.
            raise InvalidArgumentError("content_type", "must not contain a NUL character")
        encoded = content_type.encode("utf-8")
        if len(encoded) > MAX_SNAPSHOT_CONTENT_TYPE_BYTES:
            raise InvalidArgumentError(
                "content_type", f"is over the limit of {MAX_SNAPSHOT_CONTENT_TYPE_BYTES} bytes"
            )
        return encoded

    def _checked_batch(self, operations: Sequence[BatchOp]) -> list[tuple[BatchOp, bytes, bytes]]:
        """A batch's operations with their key (or prefix) and content type encoded;
        refused (naming the operation's index) when empty, over the batch limit, or when an
        operation would be refused alone."""
        check_batch_size(operations, self.limits.max_batch_operations)
        checked: list[tuple[BatchOp, bytes, bytes]] = []
        for index, operation in enumerate(operations):
            try:
                if isinstance(operation, SaveOp):
                    key = self._conversation_key(operation.key)
                    content_type = self._checked_snapshot(operation.data, operation.content_type)
                    if operation.expected_version is not None:
                        self._check_version(operation.expected_version)
                    checked.append((operation, key, content_type))
                elif isinstance(operation, DeleteOp):
                    key = self._conversation_key(operation.key)
                    if operation.expected_version is not None:
                        self._check_version(operation.expected_version)
                    checked.append((operation, key, b""))
                else:
                    checked.append((operation, encoded_prefix(operation.prefix), b""))
            except InvalidArgumentError as error:
                raise at_operation(index, error) from None
        return checked

    @staticmethod
    def _check_version(version: int) -> None:
        if not 0 <= version <= MAX_U64:
            raise InvalidArgumentError("expected_version", f"must be between 0 and {MAX_U64}")


def turn_too_large(turn: int, size: int, max_bytes: int) -> TurnTooLargeError:
    """The refusal of a whole-turn read over ``max_bytes``, naming the reads that page.

    Both engines raise it before reading the turn's records, from their sizes alone.
    """
    return TurnTooLargeError(turn, size, max_bytes)
