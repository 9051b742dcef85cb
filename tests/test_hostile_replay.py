"""Hostile Replay requests (not following), mixed with the other RPCs' requests.

Each outcome is predicted by :class:`tests.support.hostile.checker.Checker`; a
finished stream is checked by :func:`tests.support.hostile.checker.check_replay`.
"""

from __future__ import annotations

from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.support.daemon import Daemon
from tests.support.hostile.checker import Checker
from tests.support.hostile.strategies import ops, replay_requests, unknown_fields
from tests.support.hostile.wire import REPLAY, Op, connect


@st.composite
def replay_ops(draw: st.DrawFn) -> Op:
    """A replay request (not following), sometimes with an unknown field."""
    body = draw(replay_requests).SerializeToString()
    if draw(st.booleans()):
        body += draw(unknown_fields)
    return Op(REPLAY, body)


@settings(max_examples=150, deadline=None, database=None)
@given(batch=st.lists(st.one_of(replay_ops(), ops()), min_size=1, max_size=5))
async def test_replay_answers_hostile_requests_as_the_contract_says(
    hostile: Daemon, batch: list[Op]
) -> None:
    async with connect(hostile) as wire:
        checker = Checker(wire)
        for op in batch:
            code = await checker.run(op)
            event(f"{op.rpc.method} -> {code.name}")
        await checker.finish()
