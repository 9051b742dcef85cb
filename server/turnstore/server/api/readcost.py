"""Reads that cost what they return: the heavy-read gate and answers built from stored bytes.

A read that may copy megabytes (a snapshot, a whole turn over 1 MiB, a page
of turns) runs through :func:`run_heavy`, which lets at most half of the read pool's
threads (at least one) work on such reads at once. The other threads stay
free for small point reads (a tiny ``GetTurn``, a listing, a replay step), so
those answer promptly however many big reads are waiting.

The answers here are encoded around the stored bytes instead of decoding
them: a ``GetTurn`` or ``Load`` response is protobuf wire bytes joined from
the stored records (field numbers as in ``proto/turnstore/v1``; a test
decodes them with the generated classes), and the HTTP snapshot read embeds
the stored JSON in the response unparsed (:func:`snapshot_json_parts`).

Imports neither gRPC nor generated code.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import weakref
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Final, ParamSpec, TypeVar

import orjson

from turnstore.server.api.bodies import json_too_deep, too_deep_problem
from turnstore.server.storage import records
from turnstore.server.storage.config import MIB
from turnstore.server.storage.values import StoredSnapshot, TurnChunk

P = ParamSpec("P")
T = TypeVar("T")

JSON: Final = "application/json"
# JSON snapshots up to this size are still parsed once before being embedded,
# so one saved before saves were strictly checked reaches a reader as
# ``body_error`` instead of as broken JSON; larger ones are embedded as stored.
CHECKED_SNAPSHOT_BYTES: Final = 1 * MIB
# The pieces an HTTP snapshot answer is written in (each awaits the transport).
SNAPSHOT_WRITE_BYTES: Final = 1 * MIB

_slots: weakref.WeakKeyDictionary[Executor, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def heavy_read_slots(executor: Executor) -> asyncio.Semaphore:
    """The semaphore bounding heavy reads on ``executor``: half its threads, at least one."""
    slots = _slots.get(executor)
    if slots is None:
        workers = int(getattr(executor, "_max_workers", 2))
        slots = asyncio.Semaphore(max(1, workers // 2))
        _slots[executor] = slots
    return slots


async def run_heavy(executor: Executor, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a read that may copy megabytes on ``executor``, within its heavy-read slots."""
    loop = asyncio.get_running_loop()
    async with heavy_read_slots(executor):
        return await loop.run_in_executor(executor, functools.partial(fn, *args, **kwargs))


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field's tag and length (the payload follows)."""
    return records.varint((number << 3) | 2) + records.varint(len(payload))


def _int_field(number: int, value: int) -> bytes:
    """A varint field; nothing for 0 (proto3 default); negatives as two's complement."""
    if not value:
        return b""
    return records.varint(number << 3) + records.varint(value & ((1 << 64) - 1))


def get_turn_response(chunk: TurnChunk | None) -> bytes:
    """A ``GetTurnResponse`` in wire form, joined once from the stored records.

    ``Turn`` is field 2 (turn 1, finished 2, events 3); stored records are
    framed as field 1 and retagged as field 3.
    """
    if chunk is None:
        return b""
    head = _int_field(1, chunk.turn) + _int_field(2, 1 if chunk.finished else 0)
    events = [records.retag(value, 3) for value in chunk.events]
    size = len(head) + sum(map(len, events))
    turn_header = records.varint((2 << 3) | 2) + records.varint(size)
    return b"".join([b"\x08\x01", turn_header, head, *events])


def load_response(stored: StoredSnapshot | None) -> bytes:
    """A ``LoadResponse`` in wire form with the stored data copied once.

    ``Snapshot`` is field 2 (version 1, content_type 2, data 3,
    saved_at_unix_nanos 4).
    """
    if stored is None:
        return b""
    content_type = stored.content_type.encode("utf-8")
    head = _int_field(1, stored.version)
    if content_type:
        head += _field(2, content_type) + content_type
    data_head = _field(3, stored.data) if stored.data else b""
    tail = _int_field(4, stored.saved_at_ns)
    size = len(head) + len(data_head) + len(stored.data) + len(tail)
    snapshot_header = records.varint((2 << 3) | 2) + records.varint(size)
    return b"".join((b"\x08\x01", snapshot_header, head, data_head, stored.data, tail))


def is_json(content_type: str) -> bool:
    """Whether a snapshot's content type is JSON (``application/json``, any parameters/case)."""
    return content_type.split(";", 1)[0].strip().lower() == JSON


def _embeddable(data: bytes) -> bool:
    """Whether stored JSON bytes can be embedded in an answer as they are.

    Small snapshots are checked as a save checks them (depth, strict JSON;
    cheap at that size). Large ones were checked so when saved, unless an
    older turnstore stored them; the check here only refuses the obviously
    broken (empty, or not starting and ending with a matching bracket or
    quote), without reading them through.
    """
    if len(data) <= CHECKED_SNAPSHOT_BYTES:
        if json_too_deep(data):
            return False
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            return False
        return True
    stripped_start = len(data) - len(data.lstrip())
    stripped_end = len(data.rstrip())
    if stripped_end <= stripped_start:
        return False
    pair = bytes((data[stripped_start], data[stripped_end - 1]))
    return pair in (b"{}", b"[]", b'""')


def snapshot_json_parts(key: str, stored: StoredSnapshot) -> tuple[bytes, bytes, bytes]:
    """The HTTP answer for a snapshot as (head, stored data, tail), to be written in turn.

    JSON snapshots go out with their stored bytes as the ``snapshot`` value,
    unparsed; other content types, and JSON that does not pass
    :func:`_embeddable`, are answered as before this module: the data parsed
    if it is strict JSON, else ``snapshot`` null with ``body_error`` and
    ``raw_body`` (its bytes as text, invalid UTF-8 replaced) and ``size_bytes``
    in the head, and, when the data is not UTF-8 (a blob saved with
    ``save_bytes``), ``data_base64``: the bytes exactly.
    """
    fields = {
        "key": key,
        "version": stored.version,
        "content_type": stored.content_type,
        "saved_at_unix_nanos": stored.saved_at_ns,
    }
    if is_json(stored.content_type) and _embeddable(stored.data):
        head = orjson.dumps(fields)[:-1] + b',"snapshot":'
        return head, stored.data, b"}"
    body: dict[str, object] = dict(fields)
    problem = None
    if json_too_deep(stored.data):  # stored by an older version
        problem = too_deep_problem()
    else:
        try:
            body["snapshot"] = orjson.loads(stored.data)
        except orjson.JSONDecodeError as error:
            problem = f"not strict JSON: {error}"
    if problem is not None:
        body["snapshot"] = None
        body["body_error"] = problem
        body["raw_body"] = stored.data.decode("utf-8", "replace")
        body["size_bytes"] = len(stored.data)
        if not _is_utf8(stored.data):
            # Bytes (save_bytes of any type): raw_body cannot carry them, this can.
            body["data_base64"] = base64.b64encode(stored.data).decode("ascii")
    return orjson.dumps(body), b"", b""


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
