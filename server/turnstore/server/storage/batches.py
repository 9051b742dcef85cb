"""What both engines share for the newer history calls: key ranges for listings, and the
operations of an atomic batch with their checks.

A *key range* (:class:`KeyRange`) is what a ``ListKeys`` request asks for:
the keys starting with ``prefix``, sorting before ``end_before`` (whatever
the listing's direction), continued after ``start_after`` in the listing's
direction (ascending: keys above it; ``newest_first``: keys below it). Both
engines turn it into byte bounds (:meth:`KeyRange.bounds`) and walk only
their index of live keys between them, so neither the keys outside the
range nor deleted keys are read.

A *batch* (:class:`SaveOp`, :class:`DeleteOp`, :class:`DeletePrefixOp`) is
applied all or nothing in one commit. :func:`check_batch` refuses what a
single call would refuse, naming the operation's index, before anything is
written; the engines then apply the operations in order and undo them all
(a nested transaction on LMDB, a savepoint on PostgreSQL) when one fails a
version check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from turnstore.server.storage.errors import EngineError, InvalidArgumentError


@dataclass(frozen=True)
class SaveOp:
    """Store a snapshot (as ``save_snapshot``)."""

    key: str
    data: bytes
    content_type: str
    expected_version: int | None = None


@dataclass(frozen=True)
class DeleteOp:
    """Delete every kept version of a key (as ``delete_snapshots``), optionally only if it
    is at ``expected_version`` (0: nothing stored)."""

    key: str
    expected_version: int | None = None


@dataclass(frozen=True)
class DeletePrefixOp:
    """Delete every key starting with ``prefix`` (never empty), keeping their counters."""

    prefix: str


BatchOp = SaveOp | DeleteOp | DeletePrefixOp


@dataclass(frozen=True)
class BatchResult:
    """One operation's outcome: the version a save got; the versions and keys a delete
    (or delete_prefix) removed."""

    version: int = 0
    removed_versions: int = 0
    removed_keys: int = 0


E = TypeVar("E", bound=EngineError)


def at_operation(index: int, error: E) -> E:
    """``error`` with its message prefixed by the operation it is about."""
    error.args = (f"operations[{index}]: {error}",)
    if isinstance(error, InvalidArgumentError):
        error.field = f"operations[{index}].{error.field}"
    return error


def check_batch_size(operations: Sequence[BatchOp], max_operations: int) -> None:
    """Refuse an empty batch, or one over ``max_operations``."""
    if not operations:
        raise InvalidArgumentError("operations", "must hold at least one operation")
    if len(operations) > max_operations:
        raise InvalidArgumentError(
            "operations",
            f"holds {len(operations)} operations, over the limit of {max_operations} per batch",
        )


def encoded_prefix(prefix: str) -> bytes:
    """A delete_prefix's prefix as UTF-8; refused when empty."""
    if not prefix:
        raise InvalidArgumentError("delete_prefix.prefix", "must not be empty")
    return prefix.encode("utf-8", "surrogatepass")


def successor(prefix: bytes) -> bytes | None:
    """The least byte string above every string starting with ``prefix``; None if none
    (the prefix is all 0xff bytes, or empty)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


@dataclass(frozen=True)
class KeyRange:
    """A ``ListKeys`` request's range (see the module's description)."""

    prefix: str = ""
    start_after: str = ""
    end_before: str = ""
    newest_first: bool = False

    def bounds(self) -> tuple[bytes, bool, bytes | None]:
        """(low, low_inclusive, high): the keys ``k`` listed are ``low <= k`` (or ``<``
        when not inclusive) and ``k < high`` (no upper bound when None), and start with
        the prefix (implied by these bounds)."""
        prefix = self.prefix.encode("utf-8", "surrogatepass")
        low, low_inclusive = prefix, True
        highs: list[bytes] = []
        above = successor(prefix)
        if above is not None:
            highs.append(above)
        if self.end_before:
            highs.append(self.end_before.encode("utf-8", "surrogatepass"))
        if self.start_after:
            after = self.start_after.encode("utf-8", "surrogatepass")
            if self.newest_first:
                highs.append(after)
            elif after >= low:
                low, low_inclusive = after, False
        return low, low_inclusive, min(highs) if highs else None

    def contains(self, key: str) -> bool:
        """Whether ``key`` is listed by this range."""
        encoded = key.encode("utf-8", "surrogatepass")
        low, inclusive, high = self.bounds()
        if encoded < low or (encoded == low and not inclusive):
            return False
        return high is None or encoded < high
