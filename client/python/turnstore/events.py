"""Events over a daemon: :class:`TurnstoreEventStore`, obtained as ``client.events``.

It implements :class:`~turnstore.protocols.EventStore` and adds what the
daemon does beyond the contract: positions, streamed reads, replays
(:mod:`turnstore.replay`) and pipelined appends (:mod:`turnstore.appender`).
Writes go over the client's shared, retrying append stream
(``write_mode="stream"``, :mod:`turnstore._append_stream`) or as unary calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, Literal

import grpc

from turnstore._append_stream import RetryingAppendStream
from turnstore._convert import (
    RowsFormatError,
    envelopes_from_protos,
    envelopes_from_rows,
    fill_envelope,
)
from turnstore._retry import RetryPolicy, call_with_retry
from turnstore._status import mapped_stream
from turnstore._validate import check_offset, check_thread_id, check_turn
from turnstore.appender import EventAppender
from turnstore.errors import InvalidArgumentError, TurnAlreadyFinishedError
from turnstore.models import AgentEventEnvelope, StoredTurnEvents
from turnstore.replay import Replay, replay_request, start_replay
from turnstore.results import StoredEvent
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

__all__ = ["CLIENT_DEFAULT", "WRITE_MODES", "TurnstoreEventStore", "WriteMode"]


class _ClientDefault:
    """The type of :data:`CLIENT_DEFAULT`."""

    def __repr__(self) -> str:
        return "CLIENT_DEFAULT"


# A call's ``timeout`` when it is not given: the client's ``timeout``.
CLIENT_DEFAULT: Final = _ClientDefault()


# How appends and finishes travel (TurnstoreClient's ``write_mode``): over the
# client's shared append stream, or as one unary call each.
WriteMode = Literal["stream", "unary"]
WRITE_MODES: Final = ("stream", "unary")


class TurnstoreEventStore:
    """:class:`~turnstore.protocols.EventStore` over a turnstore daemon.

    Obtain it as ``client.events``. Every write is acknowledged only after
    the daemon has durably committed it.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        timeout: float | None,
        retry: RetryPolicy,
        write_mode: WriteMode = "stream",
    ) -> None:
        self._stub = pb_grpc.EventStoreServiceStub(channel)
        self._open_append_stream = RetryingAppendStream.open_call_of(channel)
        self._timeout = timeout
        self._retry = retry
        self.write_mode: WriteMode = write_mode
        self._shared: RetryingAppendStream | None = None

    def _deadline(self, timeout: float | _ClientDefault | None) -> float | None:
        return self._timeout if isinstance(timeout, _ClientDefault) else timeout

    async def append(
        self,
        thread_id: str,
        turn: int,
        envelope: AgentEventEnvelope,
        *,
        expected_next_position: int | None = None,
        timeout: float | _ClientDefault | None = CLIENT_DEFAULT,
    ) -> int:
        """Store ``envelope`` at the end of ``turn``; return its position in the thread.

        Raises TurnFinishedError when the turn is finished, EventIdConflictError
        when its event id is stored in another turn. An envelope whose event id
        is already stored in this turn is not stored again: its original
        position is returned. With ``expected_next_position``, the append
        happens only if the thread's next position (its event count; 0 for a
        new or cleared thread) is that, else VersionConflictError and nothing
        is stored; a retry of an envelope already stored returns its position
        without that check. ``timeout`` overrides the client's deadline for
        this call (None: none); past it, DeadlineExceededError is raised and
        the append may still take effect.
        """
        positions = await self.append_many(
            thread_id,
            turn,
            [envelope],
            expected_next_position=expected_next_position,
            timeout=timeout,
        )
        return positions[0]

    async def append_many(
        self,
        thread_id: str,
        turn: int,
        envelopes: Sequence[AgentEventEnvelope],
        *,
        expected_next_position: int | None = None,
        timeout: float | _ClientDefault | None = CLIENT_DEFAULT,
    ) -> list[int]:
        """Store ``envelopes`` at the end of ``turn`` atomically; return their positions.

        Either all are stored or none is. Raises InvalidArgumentError for an
        empty list. ``expected_next_position`` and ``timeout`` are as in
        :meth:`append`.
        """
        deadline = self._deadline(timeout)
        check_thread_id(thread_id)
        check_turn(turn)
        if expected_next_position is not None:
            check_turn(expected_next_position, "expected_next_position")
        if not envelopes:
            raise InvalidArgumentError("events: must hold at least one event")
        if self.write_mode == "stream":
            item = pb.AppendStreamRequest(
                thread_id=thread_id, turn=turn, expected_next_position=expected_next_position
            )
            add_to_item = item.events.add
            for envelope in envelopes:
                fill_envelope(add_to_item(), envelope)
            return await self._shared_stream().send(item, deadline)
        request = pb.AppendRequest(
            thread_id=thread_id, turn=turn, expected_next_position=expected_next_position
        )
        add = request.events.add
        for envelope in envelopes:
            fill_envelope(add(), envelope)
        response = await call_with_retry(
            lambda: self._stub.Append(request, timeout=deadline), self._retry
        )
        return list(response.positions)

    async def finish_turn(
        self,
        thread_id: str,
        turn: int,
        *,
        timeout: float | _ClientDefault | None = CLIENT_DEFAULT,
    ) -> None:
        """Close ``turn``. A turn never appended to becomes an empty finished turn.

        Raises TurnAlreadyFinishedError when the turn is already finished
        (but not when a retry of this call finds it finished by its own
        earlier attempt). ``timeout`` is as in :meth:`append`.
        """
        deadline = self._deadline(timeout)
        check_thread_id(thread_id)
        check_turn(turn)
        if self.write_mode == "stream":
            item = pb.AppendStreamRequest(thread_id=thread_id, turn=turn, finish_turn=True)
            await self._shared_stream().send(item, deadline)
            return
        request = pb.FinishTurnRequest(thread_id=thread_id, turn=turn)
        # The finish may have committed before the daemon went away, so a
        # retry that finds the turn finished is this call's own success.
        await call_with_retry(
            lambda: self._stub.FinishTurn(request, timeout=deadline),
            self._retry,
            (TurnAlreadyFinishedError, pb.FinishTurnResponse()),
        )

    def _shared_stream(self) -> RetryingAppendStream:
        if self._shared is None:
            self._shared = RetryingAppendStream(self._open_append_stream, self._retry)
        return self._shared

    async def aclose(self) -> None:
        """Close the shared append stream; calls waiting on it fail with UnavailableError.

        ``TurnstoreClient.aclose`` does this; later writes raise UnavailableError.
        """
        if self._shared is not None:
            await self._shared.aclose()

    async def get_turn(self, thread_id: str, turn: int) -> StoredTurnEvents | None:
        """The turn, or None for an unknown thread or turn."""
        check_thread_id(thread_id)
        check_turn(turn)
        request = pb.GetTurnRequest(thread_id=thread_id, turn=turn)
        response = await call_with_retry(
            lambda: self._stub.GetTurn(request, timeout=self._timeout), self._retry
        )
        if not response.found:
            return None
        return StoredTurnEvents(
            response.turn.turn,
            envelopes_from_protos(response.turn.events),
            response.turn.finished,
        )

    async def get_turns(self, thread_id: str) -> list[StoredTurnEvents]:
        """Every turn in ascending turn order; empty for an unknown thread."""
        check_thread_id(thread_id)
        return await call_with_retry(lambda: self._list_turns(thread_id), self._retry)

    async def _list_turns(self, thread_id: str) -> list[StoredTurnEvents]:
        turns: list[StoredTurnEvents] = []
        call = self._stub.ListTurns(pb.ListTurnsRequest(thread_id=thread_id), timeout=self._timeout)
        async for message in call:
            piece = message.turn
            events = envelopes_from_protos(piece.events)
            if turns and turns[-1].turn == piece.turn:
                turns[-1].events.extend(events)
            else:
                turns.append(StoredTurnEvents(piece.turn, events, piece.finished))
        return turns

    async def clear(self, thread_id: str) -> None:
        """Remove everything of the thread; a no-op for an unknown thread."""
        check_thread_id(thread_id)
        request = pb.ClearRequest(thread_id=thread_id)
        await call_with_retry(lambda: self._stub.Clear(request, timeout=self._timeout), self._retry)

    async def get_events(self, thread_id: str) -> list[AgentEventEnvelope]:
        """All envelopes, turn by turn in ascending order, each turn in append order."""
        return await self.get_events_since(thread_id, 0)

    async def event_count(self, thread_id: str) -> int:
        """The number of envelopes in the thread (0 for an unknown thread)."""
        check_thread_id(thread_id)
        request = pb.EventCountRequest(thread_id=thread_id)
        response = await call_with_retry(
            lambda: self._stub.EventCount(request, timeout=self._timeout), self._retry
        )
        return int(response.count)

    async def get_events_since(self, thread_id: str, offset: int) -> list[AgentEventEnvelope]:
        """The envelopes of :meth:`get_events` after its first ``offset``.

        The read covers the events committed when it started; it raises
        ThreadClearedError if the thread is cleared while it runs.
        """
        check_thread_id(thread_id)
        check_offset(offset)
        # JSON rows, one parse per message; if one cannot be parsed (a body stored
        # unchecked), all again as StoredEvent messages, the bad event named.
        fields: dict[str, Any] = {"thread_id": thread_id, "offset": offset}
        rows = pb.ReadEventsRequest(
            **fields, order=pb.EVENT_ORDER_TURN, encoding=pb.EVENT_ENCODING_JSON_ROWS
        )
        messages = pb.ReadEventsRequest(**fields, order=pb.EVENT_ORDER_TURN)

        async def read() -> list[AgentEventEnvelope]:
            envelopes: list[AgentEventEnvelope] = []
            try:
                async for message in self._stub.ReadEvents(rows, timeout=self._timeout):
                    envelopes += envelopes_from_rows(message.events_json)
                return envelopes
            except RowsFormatError:
                envelopes = []
            async for message in self._stub.ReadEvents(messages, timeout=self._timeout):
                envelopes += envelopes_from_protos(message.events)
            return envelopes

        return await call_with_retry(read, self._retry)

    async def read_events(
        self,
        thread_id: str,
        offset: int = 0,
        *,
        order: str = "commit",
        limit: int = 0,
        newest_first: bool = False,
    ) -> AsyncIterator[StoredEvent]:
        """Stream stored events, skipping the first ``offset`` in ``order``.

        ``order`` is ``"commit"`` (by position: ``offset`` is the first
        position returned) or ``"turn"`` (the order of :meth:`get_events`).
        ``limit`` caps how many are returned (0: all). ``newest_first``
        (commit order only) streams from the newest event backwards, in
        descending position order, ``offset`` skipping the newest; it costs
        what it returns, not the thread's length. The read covers the events
        committed when it started; it raises ThreadClearedError if the
        thread is cleared while it runs.
        """
        check_thread_id(thread_id)
        check_offset(offset)
        check_turn(limit, "limit")
        orders = {"commit": pb.EVENT_ORDER_COMMIT, "turn": pb.EVENT_ORDER_TURN}
        if order not in orders:
            raise ValueError(f"order must be 'commit' or 'turn', not {order!r}")
        if newest_first and order != "commit":
            raise ValueError("newest_first reads in commit order only")
        request = pb.ReadEventsRequest(
            thread_id=thread_id,
            offset=offset,
            order=orders[order],
            limit=limit,
            newest_first=newest_first,
        )
        async for message in mapped_stream(self._stub.ReadEvents(request, timeout=self._timeout)):
            for event in message.events:
                yield StoredEvent.from_proto(event)

    async def last_events(self, thread_id: str, n: int) -> list[StoredEvent]:
        """The last ``n`` stored events (fewer if the thread holds fewer), in append order.

        Reads only those ``n`` (a newest-first read), whatever the thread's
        length; ``n`` = 0 returns nothing.
        """
        check_turn(n, "n")
        if n == 0:
            return []

        async def read() -> list[StoredEvent]:
            newest = [e async for e in self.read_events(thread_id, limit=n, newest_first=True)]
            newest.reverse()
            return newest

        return await call_with_retry(read, self._retry)

    def replay(
        self,
        thread_id: str,
        after: int | None = None,
        *,
        follow: bool = False,
        from_turn: int | None = None,
        to_turn: int | None = None,
        event_types: Sequence[str] | None = None,
        until_turn_finished: int | None = None,
        epoch: int | None = None,
        timeout: float | _ClientDefault | None = CLIENT_DEFAULT,
        max_events_per_message: int = 0,
        decode: bool = False,
    ) -> Replay:
        r"""Replay a thread after position ``after`` (None: from the start).

        Yields stored events in position order with the markers
        ``TurnFinished``, ``CaughtUp`` (once) and ``ThreadCleared``. Without
        ``follow`` it ends once caught up; with it, it goes on with every new
        commit until ``until_turn_finished`` is finished, the thread is
        cleared, ``timeout`` passes (DeadlineExceededError) or it is closed.
        ``from_turn``/``to_turn`` bound the turns and ``event_types`` the
        types of events yielded. To resume, pass the previous replay's
        ``last_position`` as ``after`` and its ``epoch`` as ``epoch``.

        A cursor that was never handed out for this thread (``after`` at or
        past its end) fails with CursorOutOfRangeError instead of waiting
        silently. An ``epoch`` that is not the thread's current one (the
        thread was cleared, or the database restored from a backup) yields
        ``ThreadCleared`` and ends: replay again without ``after``/``epoch``.

        ``timeout`` bounds the whole replay, retries included; by default it
        is the client's deadline without ``follow`` and none with it (a
        follower is long-lived; keepalive pings find a daemon that stopped
        answering). A replay that fails with UnavailableError before its first
        item is started again per the client's retry policy; after it, the
        error is raised (resume with ``after``/``epoch``).

        By default events come as wire ``StoredEvent`` messages (``message``,
        the body byte for byte), decoded on first ``envelope``: a replay is
        bound by the daemon's CPU, so the faster end to end. ``decode=True``
        asks for JSON rows, one parse per message (``envelope`` ready,
        ``message`` None): half the client's CPU, more of the daemon's.
        """
        request = replay_request(
            thread_id,
            after,
            follow=follow,
            from_turn=from_turn,
            to_turn=to_turn,
            event_types=event_types,
            until_turn_finished=until_turn_finished,
            epoch=epoch,
            max_events_per_message=max_events_per_message,
            decode=decode,
        )
        if isinstance(timeout, _ClientDefault):
            timeout = None if follow else self._timeout
        return start_replay(self._stub.Replay, request, after, epoch, timeout, self._retry)

    def appender(self) -> EventAppender:
        """Open a pipelining appender (an ``AppendStream`` of its own); use it as ``async with``.

        Its ``append`` and ``finish_turn`` each have the client's deadline;
        a broken stream is reopened and its pending items resent per the
        client's retry policy, as for the shared stream.
        """
        return EventAppender(self._open_append_stream, self._timeout, self._retry)
