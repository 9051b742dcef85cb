"""Follow a turn live while an agent writes it, survive a dropped connection.

An "agent" streams token deltas into one turn over a streaming appender. A
"reader" follows the thread live, drops its connection halfway, reconnects
with its cursor (last position and thread epoch), and ends with exactly the
text the agent wrote: nothing missed, nothing doubled.

Run it against a daemon (``make run`` starts one on 127.0.0.1:7070)::

    .venv/bin/python examples/live_tail.py [TARGET]
"""

from __future__ import annotations

import asyncio
import sys
import uuid

from turnstore import AgentEventEnvelope, StoredEvent, TurnFinished, TurnstoreClient

TOKENS = [f"token{n} " for n in range(200)]
TURN = 1


async def agent(target: str, thread: str, started: asyncio.Event) -> str:
    """Write the tokens as text deltas into TURN, then finish the turn."""
    async with TurnstoreClient(target) as client, client.events.appender() as appender:
        started.set()
        for sequence, token in enumerate(TOKENS):
            event = {"type": "text_delta", "message_id": "m1", "delta": token}
            await appender.submit(thread, TURN, [AgentEventEnvelope.new(event, sequence)])
            await asyncio.sleep(0.002)  # the model thinking
        await appender.finish_turn(thread, TURN)
    return "".join(TOKENS)


async def reader(target: str, thread: str) -> str:
    """Follow the turn; drop the connection halfway; resume from the cursor."""
    received: list[str] = []
    after: int | None = None
    epoch: int | None = None
    for attempt in ("first connection", "after reconnecting"):
        async with TurnstoreClient(target) as client:
            replay = client.events.replay(
                thread, after, epoch=epoch, follow=True, until_turn_finished=TURN
            )
            async with replay:
                async for item in replay:
                    if isinstance(item, StoredEvent):
                        received.append(item.envelope.event["delta"])
                    elif isinstance(item, TurnFinished):
                        print(f"turn {item.turn} finished with {item.event_count} events")
                    if attempt == "first connection" and len(received) == len(TOKENS) // 2:
                        break  # the connection drops here
            after, epoch = replay.last_position, replay.epoch
        print(f"{attempt}: {len(received)} deltas so far, cursor at position {after}")
    return "".join(received)


async def main(target: str) -> int:
    thread = f"example-{uuid.uuid4()}"
    started = asyncio.Event()
    writing = asyncio.create_task(agent(target, thread, started))
    await started.wait()
    read = await reader(target, thread)
    written = await writing
    print(f"written {len(written)} characters, read {len(read)} characters")
    if read != written:
        print("MISMATCH: the reader did not end with exactly the written text")
        return 1
    print("the reader ended with exactly the text that was written")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:7070")))
