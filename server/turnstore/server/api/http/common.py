"""What the HTTP routes share: JSON answers, errors with the one table's statuses, query values.

An error answer is ``{"error": REASON, "message": ...}``. For the daemon's
reasons its status comes from :data:`turnstore.server.api.errors.STATUS_BY_REASON`
(the gRPC edge's table too); the few reasons only HTTP has (``not_found``,
``host_not_allowed``, ...) name their status where they are answered.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any, Final

import orjson
from aiohttp import web

from turnstore.server.api.errors import STATUS_BY_REASON, status_of
from turnstore.server.storage.errors import DaemonError, InvalidArgumentError

_BAD_ESCAPE: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_FALSE: Final = frozenset({"0", "false", "no", "off"})
_TRUE: Final = frozenset({"", "1", "true", "yes", "on"})


def json_response(data: Any, status: int = 200) -> web.Response:
    """``data`` as a JSON answer."""
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def http_error(status: int, reason: str, message: str) -> web.Response:
    """An error answer of an HTTP-only reason, with its own status."""
    return json_response({"error": reason, "message": message}, status)


def reason_error(reason: str, message: str) -> web.Response:
    """An error answer of one of the daemon's reasons, with the table's status."""
    return http_error(STATUS_BY_REASON[reason].http, reason, message)


def refusal(error: DaemonError) -> web.Response:
    """The error answer of ``error``: the table's status of its reason (500 if not listed)."""
    return http_error(status_of(error).http, error.reason, str(error))


def int_param(query: Any, name: str, default: int | None, low: int, high: int) -> int | None:
    """Query value ``name`` as an integer from ``low`` to ``high`` (``default`` if absent or empty).

    Raises InvalidArgumentError for anything else (signs and spaces included).
    """
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise InvalidArgumentError(name, f"must be an integer from {low} to {high}")
    return int(raw)


def flag_param(query: Any, name: str, default: bool) -> bool:
    """Query value ``name`` as a flag (a bare ``?name`` is true); else InvalidArgumentError."""
    raw = query.get(name)
    if raw is None:
        return default
    if raw.lower() in _FALSE:
        return False
    if raw.lower() in _TRUE:
        return True
    raise InvalidArgumentError(name, "must be 1/0, true/false, yes/no or on/off")


def unquote_path(raw: str, field: str) -> str:
    """A percent-encoded path segment decoded; InvalidArgumentError if malformed or empty."""
    if _BAD_ESCAPE.search(raw):
        raise InvalidArgumentError(field, "has a % not followed by two hex digits")
    try:
        text = urllib.parse.unquote(raw, errors="strict")
    except UnicodeDecodeError as error:
        raise InvalidArgumentError(field, "is not percent-encoded UTF-8") from error
    if not text:
        raise InvalidArgumentError(field, "must not be empty")
    return text
