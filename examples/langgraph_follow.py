"""Follow a running LangGraph graph live: every checkpoint and every task's writes.

A graph drafts, stops for a human review (an interrupt), is resumed and
publishes, checkpointed by ``TurnstoreSaver``. Meanwhile a "UI" follows the
event thread ``langgraph/{thread_id}``, where the saver announces each
checkpoint and each task's writes, and loads each announced checkpoint's
state through the saver, as a UI would to show it. Needs
``pip install turnstore[langgraph]``.

Run it against a daemon (``make run`` starts one on 127.0.0.1:7070)::

    .venv/bin/python examples/langgraph_follow.py [TARGET]
"""

from __future__ import annotations

import asyncio
import operator
import sys
import uuid
from typing import Annotated, Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from turnstore import StoredEvent, TurnstoreClient
from turnstore.integrations.langgraph import TurnstoreSaver


class Draft(TypedDict):
    log: Annotated[list[str], operator.add]
    approved: bool


def build() -> StateGraph[Draft]:
    def write(state: Draft) -> dict[str, Any]:
        return {"log": ["drafted"]}

    def review(state: Draft) -> dict[str, Any]:
        approved = bool(interrupt({"question": "publish?"}))
        return {"approved": approved, "log": [f"reviewed:{approved}"]}

    def publish(state: Draft) -> dict[str, Any]:
        return {"log": ["published" if state["approved"] else "dropped"]}

    graph = StateGraph(Draft)
    graph.add_node("write", write)
    graph.add_node("review", review)
    graph.add_node("publish", publish)
    graph.add_edge(START, "write")
    graph.add_edge("write", "review")
    graph.add_edge("review", "publish")
    graph.add_edge("publish", END)
    return graph


async def ui(
    target: str, saver: TurnstoreSaver, thread_id: str, seen: list[str], shown: asyncio.Event
) -> None:
    """Print what the graph stores, as it stores it (until cancelled)."""
    async with TurnstoreClient(target) as client:
        async for item in client.events.replay(saver.key_prefix + thread_id, follow=True):
            if not isinstance(item, StoredEvent):
                continue
            event = item.envelope.event
            if event["type"] == "langgraph.checkpoint":
                config: RunnableConfig = {
                    "configurable": {
                        "thread_id": thread_id,
                        "checkpoint_ns": event["checkpoint_ns"],
                        "checkpoint_id": event["checkpoint_id"],
                    }
                }
                stored = await saver.aget_tuple(config)
                values = stored.checkpoint["channel_values"] if stored else None
                log = values.get("log") if values else None
                print(f"checkpoint step={event['step']} source={event['source']} log={log}")
                seen.append(event["checkpoint_id"])
                shown.set()
            elif event["type"] == "langgraph.writes":
                for write in event["writes"]:
                    print(f"  writes {write['channel']} = {write['value']}")


async def main(target: str) -> None:
    thread_id = f"review-{uuid.uuid4()}"
    config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
    async with TurnstoreSaver.from_target(target) as saver:
        graph = build().compile(checkpointer=saver)
        seen: list[str] = []
        shown = asyncio.Event()
        follower = asyncio.create_task(ui(target, saver, thread_id, seen, shown))
        paused = await graph.ainvoke({"log": ["start"], "approved": False}, config)
        print(f"paused for review: {paused['__interrupt__'][0].value}")
        done = await graph.ainvoke(Command(resume=True), config)
        print(f"done: {done['log']}")
        # Stop the UI once it has shown the last checkpoint.
        last = (await graph.aget_state(config)).config["configurable"]["checkpoint_id"]
        async with asyncio.timeout(30):
            while last not in seen:
                shown.clear()
                await shown.wait()
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        print(f"followed {len(seen)} checkpoints live")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7070"))
