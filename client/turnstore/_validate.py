"""Argument checks shared by the gRPC and in-memory stores."""

from __future__ import annotations

from turnstore.errors import InvalidArgumentError


def check_thread_id(thread_id: str) -> None:
    """Raise InvalidArgumentError for an empty or non-string thread id."""
    if not isinstance(thread_id, str) or not thread_id:
        raise InvalidArgumentError("thread_id: must be a non-empty string")


def check_turn(turn: int, name: str = "turn") -> None:
    """Raise InvalidArgumentError for a value outside 0..2**64-1 (a turn by default)."""
    if not isinstance(turn, int) or isinstance(turn, bool) or not 0 <= turn < 1 << 64:
        raise InvalidArgumentError(f"{name}: must be an integer between 0 and 2**64-1")


def check_offset(offset: int) -> None:
    """Raise InvalidArgumentError for a negative or non-integer offset."""
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise InvalidArgumentError("offset: must be a non-negative integer")
