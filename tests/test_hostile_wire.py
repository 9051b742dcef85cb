"""Hostile raw requests to the nine unary and server-streaming RPCs, and GetStats.

Append, FinishTurn, GetTurn, ListTurns, ReadEvents, EventCount, Clear, Save
and Load each get malformed requests (out-of-range values, oversized
strings, unknown fields, two messages merged), random bytes, and strings
that are not UTF-8, each outcome strictly predicted by
:class:`tests.support.hostile.checker.Checker`; Admin.GetStats gets unknown fields.
The machinery is in ``tests/support/hostile/``; Replay, AppendStream, the size
limits and the client have modules of their own, so that a fault in one
does not hide the others.
"""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.support.daemon import Daemon
from tests.support.hostile.checker import Checker
from tests.support.hostile.strategies import (
    STRING_FIELDS,
    bad_utf8,
    garbage,
    ops,
    unknown_fields,
    with_bad_string,
)
from tests.support.hostile.wire import GET_STATS, INVALID, OK, THREAD_POOL, Op, connect


@settings(max_examples=300, deadline=None, database=None)
@given(batch=st.lists(ops(), min_size=1, max_size=6))
async def test_every_rpc_answers_malformed_requests_as_the_contract_says(
    hostile: Daemon, batch: list[Op]
) -> None:
    async with connect(hostile) as wire:
        checker = Checker(wire)
        for op in batch:
            code = await checker.run(op)
            event(f"{op.rpc.method} -> {code.name}")  # shown by --hypothesis-show-statistics
        await checker.finish()


@settings(max_examples=150, deadline=None, database=None)
@given(batch=st.lists(garbage(), min_size=1, max_size=4))
async def test_random_bytes_as_requests_get_a_proper_status(
    hostile: Daemon, batch: list[Op]
) -> None:
    async with connect(hostile) as wire:
        checker = Checker(wire)
        for op in batch:
            code = await checker.run(op)
            event(f"{op.rpc.method} -> {code.name}")  # shown by --hypothesis-show-statistics
        await checker.finish()


@settings(max_examples=60, deadline=None, database=None)
@given(where=st.sampled_from(STRING_FIELDS), bad=bad_utf8)
async def test_strings_that_are_not_utf8_are_invalid_arguments(
    hostile: Daemon, where: str, bad: bytes
) -> None:
    op = with_bad_string(where, bad)
    assert op.request is None  # protobuf refuses it, as the daemon must
    async with connect(hostile) as wire:
        count = await wire.count(THREAD_POOL[0])
        checker = Checker(wire)
        assert await checker.run(op) == INVALID
        assert await wire.count(THREAD_POOL[0]) == count
        checker.touched.add(THREAD_POOL[0])
        await checker.finish()


@settings(max_examples=40, deadline=None, database=None)
@given(fields=st.lists(unknown_fields, max_size=3))
async def test_get_stats_ignores_unknown_fields(hostile: Daemon, fields: list[bytes]) -> None:
    async with connect(hostile) as wire:
        code = await Checker(wire).run(Op(GET_STATS, b"".join(fields)))
        assert code == OK
        await wire.check_alive()
