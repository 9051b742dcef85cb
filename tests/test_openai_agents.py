"""The OpenAI Agents SDK session (turnstore.integrations.openai_agents) on a real daemon.

The SDK is the real one (``openai-agents`` from PyPI, a test dependency);
the model is a fake written here against the SDK's ``Model`` interface,
answering without a network. What the issue asks of a session:

- an ``Agent`` run twice through ``Runner.run`` sees its first run's items;
- concurrent ``add_items`` lose nothing;
- two concurrent ``pop_item`` never return the same item;
- items survive a daemon restart (both backends);
- ``get_items(limit)`` reads what it returns, not the whole thread (counted
  as the events the daemon sends the session);
- an item over the daemon's event size limit is split and read back whole.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from agents import Agent, ModelSettings, RunConfig, Runner
from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import ModelResponse, TResponseInputItem, TResponseStreamEvent
from agents.models.interface import Model, ModelTracing
from agents.tool import Tool
from agents.usage import Usage
from openai.types.responses import ResponseOutputMessage, ResponseOutputText

from tests.support.daemon import Daemon
from turnstore import AgentEventEnvelope, TurnstoreClient
from turnstore.events import TurnstoreEventStore
from turnstore.integrations.openai_agents import TurnstoreSession


class EchoModel(Model):
    """A model that answers "reply N to: LAST USER TEXT" and keeps every input it was given."""

    def __init__(self) -> None:
        self.inputs: list[list[Any]] = []

    async def get_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff[Any, Any]],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: Any,
    ) -> ModelResponse:
        items: list[Any] = [user(input)] if isinstance(input, str) else list(input)
        self.inputs.append(items)
        last_user = [item for item in items if item.get("role") == "user"][-1]
        text = f"reply {len(self.inputs)} to: {last_user['content']}"
        message = ResponseOutputMessage(
            id=f"msg_{len(self.inputs)}",
            content=[ResponseOutputText(annotations=[], text=text, type="output_text")],
            role="assistant",
            status="completed",
            type="message",
        )
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    def stream_response(
        self,
        system_instructions: str | None,
        input: str | list[TResponseInputItem],
        model_settings: ModelSettings,
        tools: list[Tool],
        output_schema: AgentOutputSchemaBase | None,
        handoffs: list[Handoff[Any, Any]],
        tracing: ModelTracing,
        *,
        previous_response_id: str | None,
        conversation_id: str | None,
        prompt: Any,
    ) -> AsyncIterator[TResponseStreamEvent]:
        raise NotImplementedError("these tests run without streaming")


def texts(items: list[Any]) -> list[str]:
    """Each item's text: a user message's content, an assistant message's output text."""
    out = []
    for item in items:
        content = item.get("content")
        if isinstance(content, str):
            out.append(content)
        else:
            out.append("".join(part.get("text", "") for part in content or []))
    return out


def content(item: Any) -> Any:
    """An item's content (items are the SDK's TypedDicts; a test reads them loosely)."""
    return item["content"]


def user(text: str) -> Any:
    return {"role": "user", "content": text}


async def test_an_agent_run_twice_sees_its_first_runs_items(daemon: Daemon) -> None:
    model = EchoModel()
    agent = Agent(name="assistant", instructions="Answer briefly.", model=model)
    config = RunConfig(tracing_disabled=True)
    async with TurnstoreSession("run-twice", target=daemon.target) as session:
        await session.clear_session()
        first = await Runner.run(agent, "my name is Ada", session=session, run_config=config)
        assert first.final_output == "reply 1 to: my name is Ada"
        second = await Runner.run(agent, "what is my name?", session=session, run_config=config)
        assert second.final_output == "reply 2 to: what is my name?"
    # The second call's model input held the first run's question and answer.
    assert texts(model.inputs[1]) == [
        "my name is Ada",
        "reply 1 to: my name is Ada",
        "what is my name?",
    ]
    async with TurnstoreSession("run-twice", target=daemon.target) as reopened:
        assert texts(await reopened.get_items()) == [
            "my name is Ada",
            "reply 1 to: my name is Ada",
            "what is my name?",
            "reply 2 to: what is my name?",
        ]


async def test_concurrent_add_items_lose_nothing(client: TurnstoreClient) -> None:
    sessions = [TurnstoreSession("concurrent-adds", client=client) for _ in range(8)]
    await sessions[0].clear_session()

    async def writer(n: int, session: TurnstoreSession) -> None:
        for k in range(10):
            await session.add_items([user(f"w{n}-{k}a"), user(f"w{n}-{k}b")])

    await asyncio.gather(*(writer(n, s) for n, s in enumerate(sessions)))
    got = texts(await sessions[0].get_items())
    assert sorted(got) == sorted(f"w{n}-{k}{x}" for n in range(8) for k in range(10) for x in "ab")
    # Each add_items is one atomic append: its items stay adjacent and in order.
    for n in range(8):
        for k in range(10):
            index = got.index(f"w{n}-{k}a")
            assert got[index + 1] == f"w{n}-{k}b"


def test_concurrent_pops_never_return_the_same_item_while_adds_go_on(
    start_daemon: Callable[..., Daemon], backend_args: list[str]
) -> None:
    daemon = start_daemon("postgres" if backend_args else "lmdb")

    async def run() -> None:
        async with TurnstoreClient(daemon.target) as client:
            session = TurnstoreSession("concurrent-pops", client=client)
            await session.add_items([user(f"item {n}") for n in range(30)])
            poppers = [TurnstoreSession("concurrent-pops", client=client) for _ in range(6)]
            added = [f"item {n}" for n in range(30)]

            async def add_more() -> None:
                for n in range(30, 60):
                    await session.add_items([user(f"item {n}")])
                    added.append(f"item {n}")

            async def pop_some(popper: TurnstoreSession) -> list[str]:
                popped = []
                for _ in range(8):
                    item = await popper.pop_item()
                    if item is not None:
                        popped.append(content(item))
                return popped

            adding = asyncio.ensure_future(add_more())
            results = await asyncio.gather(*(pop_some(p) for p in poppers))
            await adding
            every = [text for popped in results for text in popped]
            assert len(every) == len(set(every)), "an item was popped twice"
            remaining = texts(await session.get_items())
            # Nothing lost, nothing twice: what was popped and what is left are the adds.
            assert sorted(every + remaining) == sorted(added)
            while await session.pop_item() is not None:
                pass
            assert await session.get_items() == []

    asyncio.run(run())


async def test_pop_removes_the_newest_and_get_items_returns_the_last_live_ones(
    client: TurnstoreClient,
) -> None:
    session = TurnstoreSession("pop-order", client=client)
    await session.clear_session()
    await session.add_items([user(str(n)) for n in range(10)])
    assert content(await session.pop_item()) == "9"
    assert content(await session.pop_item()) == "8"
    await session.add_items([user("10")])
    assert texts(await session.get_items(limit=3)) == ["6", "7", "10"]
    assert texts(await session.get_items()) == [*map(str, range(8)), "10"]
    assert await session.get_items(limit=0) == []
    await session.clear_session()
    assert await session.get_items() == []


def test_items_survive_a_daemon_restart(
    start_daemon: Callable[..., Daemon], backend_args: list[str]
) -> None:
    daemon = start_daemon("postgres" if backend_args else "lmdb")

    async def write() -> None:
        async with TurnstoreSession("restart", target=daemon.target) as session:
            await session.add_items([user("before"), user("popped")])
            assert content(await session.pop_item()) == "popped"

    async def read() -> list[str]:
        async with TurnstoreSession("restart", target=daemon.target) as session:
            return texts(await session.get_items())

    asyncio.run(write())
    assert daemon.stop() == 0
    daemon.start()
    assert asyncio.run(read()) == ["before"]


class CountingEvents(TurnstoreEventStore):
    """The client's real event store, counting the events the daemon sends to reads."""

    def __init__(self, real: TurnstoreEventStore) -> None:
        self.__dict__.update(real.__dict__)
        self.received = 0

    async def read_events(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async for event in super().read_events(*args, **kwargs):
            self.received += 1
            yield event


async def test_get_items_with_a_limit_reads_what_it_returns(client: TurnstoreClient) -> None:
    session = TurnstoreSession("long-session", client=client)
    await session.clear_session()
    for start in range(0, 3000, 500):
        await session.add_items([user(str(n)) for n in range(start, start + 500)])
    for _ in range(3):
        await session.pop_item()  # tombstones among the newest events
    counting = CountingEvents(client.events)
    client.events = counting
    assert texts(await session.get_items(limit=5)) == [str(n) for n in range(2992, 2997)]
    # 5 live items, 3 popped ones and their 3 tombstones: one page of 16 events.
    assert counting.received <= 16
    counting.received = 0
    got = await session.get_items(limit=100)
    assert texts(got) == [str(n) for n in range(2897, 2997)]
    assert counting.received <= 2 * 106
    counting.received = 0
    assert content(await session.pop_item()) == "2996"
    assert counting.received <= 16


async def test_an_item_over_the_event_limit_is_split_and_read_back_whole(
    client: TurnstoreClient, tmp_path: Path
) -> None:
    session = TurnstoreSession("large-item", client=client)
    await session.clear_session()
    # 3 MB of text with quotes and non-ASCII (escaping changes sizes): over the
    # daemon's 1 MiB event limit.
    big = 'quote " é ' * 300_000
    await session.add_items([user("small"), user(big), user("after")])
    assert texts(await session.get_items()) == ["small", big, "after"]
    assert texts(await session.get_items(limit=2)) == [big, "after"]
    assert content(await session.pop_item()) == "after"
    assert content(await session.pop_item()) == big
    assert texts(await session.get_items()) == ["small"]
    assert await client.events.event_count(session.thread_id) > 5  # it was split


EXAMPLE = Path(__file__).parent.parent / "examples" / "openai_agents_session.py"


async def test_the_docs_example_runs_and_its_second_run_remembers_the_first(
    daemon: Daemon, client: TurnstoreClient
) -> None:
    await client.events.clear("openai-agents/example-user")
    env = {**os.environ, "TURNSTORE_TARGET": daemon.target}
    outputs = []
    for _ in range(2):
        run = await asyncio.create_subprocess_exec(
            sys.executable, str(EXAMPLE), env=env, stdout=asyncio.subprocess.PIPE
        )
        stdout, _ = await run.communicate()
        assert run.returncode == 0
        outputs.append(stdout.decode())
    assert outputs[0].startswith("I have 1 messages so far; the last one: Hello, remember me?")
    # The first run's answer was popped; its question stayed.
    assert outputs[1].startswith("I have 2 messages so far")
    assert "popped: {" in outputs[1]
    stored = await client.events.event_count("openai-agents/example-user")
    assert stored == 6  # two questions, two answers, two tombstones


async def test_a_tombstone_of_another_life_of_the_thread_hides_nothing(
    client: TurnstoreClient,
) -> None:
    # A pop that read the thread, then lost the race to a clear and a refill to
    # the same length, appends its tombstone into the new life: it names the
    # position and the event id of the old item, so it hides nothing there.
    session = TurnstoreSession("cleared-under-a-pop", client=client)
    await session.clear_session()
    await session.add_items([user("old 0"), user("old 1")])
    old = await client.events.last_events(session.thread_id, 1)
    await session.clear_session()
    await session.add_items([user("new 0"), user("new 1")])
    stale = AgentEventEnvelope(
        uuid.uuid4(),
        0,
        "2026-01-01T00:00:00Z",
        {"type": "session_pop", "popped": 1, "popped_event_id": old[0].envelope.event_id},
    )
    await client.events.append(session.thread_id, 1, stale, expected_next_position=2)
    assert texts(await session.get_items()) == ["new 0", "new 1"]
    assert texts(await session.get_items(limit=1)) == ["new 1"]
    assert content(await session.pop_item()) == "new 1"
