"""Argument checks shared by the gRPC and in-memory stores."""

from __future__ import annotations

from turnstore.errors import InvalidArgumentError


def check_text(value: str, name: str) -> None:
    """Raise InvalidArgumentError unless ``value`` is a non-empty, UTF-8-encodable str."""
    if not isinstance(value, str) or not value:
        raise InvalidArgumentError(f"{name}: must be a non-empty string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidArgumentError(f"{name}: is not valid Unicode ({error.reason})") from error


def check_thread_id(thread_id: str) -> None:
    """Raise InvalidArgumentError for an empty, non-string or unencodable thread id."""
    check_text(thread_id, "thread_id")


def check_turn(turn: int, name: str = "turn") -> None:
    """Raise InvalidArgumentError for a value outside 0..2**64-1 (a turn by default)."""
    if not isinstance(turn, int) or isinstance(turn, bool) or not 0 <= turn < 1 << 64:
        raise InvalidArgumentError(f"{name}: must be an integer between 0 and 2**64-1")


def check_offset(offset: int) -> None:
    """Raise InvalidArgumentError for an offset outside 0..2**64-1."""
    check_turn(offset, "offset")
