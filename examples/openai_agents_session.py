"""An OpenAI Agents SDK agent whose conversation memory lives in turnstore.

Run a daemon (``make run``), then::

    pip install 'turnstore[openai-agents]'
    TURNSTORE_TARGET=127.0.0.1:7070 python examples/openai_agents_session.py

It runs offline: ``EchoModel`` below stands in for a real model (it answers
with what it was given), so you can see what the session feeds the agent.
With an OpenAI key, pass ``model="gpt-4.1-mini"`` to the ``Agent`` instead.
Run it twice: the second run remembers the first, since the items are in
the daemon (thread ``openai-agents/example-user``), not in this process.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from agents import Agent, ModelSettings, RunConfig, Runner
from agents.agent_output import AgentOutputSchemaBase
from agents.handoffs import Handoff
from agents.items import ModelResponse, TResponseInputItem, TResponseStreamEvent
from agents.models.interface import Model, ModelTracing
from agents.tool import Tool
from agents.usage import Usage
from openai.types.responses import ResponseOutputMessage, ResponseOutputText

from turnstore.integrations.openai_agents import TurnstoreSession


class EchoModel(Model):
    """An offline model: says how many messages it was given, and the last one."""

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
        items: list[Any] = [input] if isinstance(input, str) else list(input)
        last = items[-1] if isinstance(items[-1], str) else items[-1].get("content")
        text = f"I have {len(items)} messages so far; the last one: {last}"
        message = ResponseOutputMessage(
            id="msg_echo",
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
        raise NotImplementedError("this example does not stream")


async def main() -> None:
    target = os.environ.get("TURNSTORE_TARGET", "127.0.0.1:7070")
    agent = Agent(name="assistant", instructions="Answer briefly.", model=EchoModel())
    config = RunConfig(tracing_disabled=True)
    async with TurnstoreSession("example-user", target=target) as session:
        result = await Runner.run(agent, "Hello, remember me?", session=session, run_config=config)
        print(result.final_output)
        # The last two items (this run's question and answer), read from the end.
        print(await session.get_items(limit=2))
        # Undo the answer, e.g. to regenerate it (atomic, even against other writers).
        print("popped:", await session.pop_item())


if __name__ == "__main__":
    asyncio.run(main())
