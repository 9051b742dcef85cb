"""Strict JSON for event bodies and snapshots, with orjson.

Every reader in every language must be able to parse what a client
writes, so values that JSON cannot carry faithfully are refused instead
of being written in a form another language rejects (``NaN``) or reads
back as something else (a ``datetime`` as a string, an integer key as a
string key). orjson is 5 to 10 times faster than the standard library at
both ends, which is most of the client's per-event cost.
"""

from __future__ import annotations

import math
import re
from itertools import accumulate
from typing import Any, Final

import orjson

# Refuse what orjson would otherwise turn into something else: datetimes,
# dataclasses and subclasses of str/int/dict/list reach `default`, which
# has none to give.
_STRICT: Final = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)

loads: Final = orjson.loads
"""Parse JSON bytes or text (RFC 8259: no NaN, no trailing commas); raises ValueError."""

MAX_JSON_DEPTH: Final = 64
"""The deepest nesting of arrays and objects the daemon accepts in an event body
or a JSON snapshot (the body object is level 1): low enough for every reader's
parser, serde_json's 128 included, with room for the wrappers readers add."""

# A JSON string, escapes included (the unrolled form: no backtracking).
# An unclosed one runs to the end of the text: every quote a scan meets
# starts a match, so the scan stays linear whatever the text (a string that
# had to be closed would be tried again from every later quote).
_JSON_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP: Final = [1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256)]


def too_deep(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text ``data`` nests arrays and objects deeper than ``limit``.

    Brackets inside strings do not count; at most ``limit`` opening brackets
    in all is answered by two C-speed counts. For text that is not JSON the
    answer is a guess, never an error.
    """
    # JSON deeper than ``limit`` takes limit + 1 pairs of brackets at least.
    if len(data) <= 2 * limit + 1 or data.count(b"{") + data.count(b"[") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > limit


class NotJsonError(ValueError):
    """A value JSON cannot represent faithfully; ``path`` names where it is."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def dumps(value: Any, root: str = "$") -> bytes:
    """Encode ``value`` as compact UTF-8 JSON, or raise NotJsonError naming the key path.

    Refused: NaN and infinities, non-string keys, bytes, datetimes, sets,
    lone surrogates, integers beyond 64 bits and any other object; tuples
    are encoded as arrays. ``root`` names the value in the path (``$.a[0]``).
    """
    try:
        data = orjson.dumps(value, option=_STRICT)
    except TypeError as error:
        if "ecursion" in str(error):
            # Nested past orjson's limit (254): walking it would recurse as deep.
            raise NotJsonError(root, f"is nested too deep to encode: {error}") from None
        raise _find_problem(value, root) or NotJsonError(root, str(error)) from error
    # orjson writes NaN and infinities as null; only then is a walk needed.
    if b"null" in data:
        problem = _find_problem(value, root)
        if problem is not None:
            raise problem
    return data


def _find_problem(value: Any, path: str) -> NotJsonError | None:
    """The first value under ``value`` that strict JSON cannot carry, or None."""
    kind = type(value)
    if value is None or kind is bool or kind is str:
        if kind is str and not _encodable(value):
            return NotJsonError(path, "holds a lone surrogate, which UTF-8 cannot encode")
        return None
    if kind is int:
        if not -(1 << 63) <= value < 1 << 64:
            return NotJsonError(path, f"integer {value} is beyond 64 bits")
        return None
    if kind is float:
        return None if math.isfinite(value) else NotJsonError(path, f"{value} is not JSON")
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return NotJsonError(path, f"key {key!r} is a {type(key).__name__}, not a string")
            found = _find_problem(item, f"{path}.{key}")
            if found is not None:
                return found
        return None
    if kind is list or kind is tuple:
        for index, item in enumerate(value):
            found = _find_problem(item, f"{path}[{index}]")
            if found is not None:
                return found
        return None
    try:
        orjson.dumps(value, option=_STRICT)
    except TypeError:
        return NotJsonError(path, f"a {kind.__name__} is not a JSON value")
    return None  # a UUID or an Enum member: orjson writes its string or value


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
