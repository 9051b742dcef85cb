"""A small Server-Sent Events reader over aiohttp, for tests (parses as browsers do)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp


def strict_json(text: str) -> Any:
    """Parse JSON, refusing NaN and infinities as a browser's JSON.parse does."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@dataclass
class SseEvent:
    """One dispatched event: its name ("message" by default), id and data."""

    name: str
    id: str | None
    data: str

    def json(self) -> Any:
        return strict_json(self.data)


@dataclass
class SseStream:
    """An open event stream; ``comments`` counts the comment lines seen."""

    response: aiohttp.ClientResponse
    last_id: str | None = None
    comments: list[str] = field(default_factory=list)

    async def next(self, timeout: float = 30.0) -> SseEvent | None:  # noqa: ASYNC109
        """The next event, or None at the end of the stream."""
        return await asyncio.wait_for(self._next(), timeout)

    async def _next(self) -> SseEvent | None:
        name, event_id = "", None
        data: list[str] = []
        while True:
            raw = await self.response.content.readline()
            if not raw:
                return None
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line:
                if not data and not name and event_id is None:
                    continue
                if event_id is not None:
                    self.last_id = event_id
                if not data:
                    name, event_id = "", None
                    continue
                return SseEvent(name or "message", event_id, "\n".join(data))
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "data":
                data.append(value)
            elif key == "event":
                name = value
            elif key == "id":
                event_id = value
            # `retry` and unknown fields are ignored here.

    async def rest(self, timeout: float = 30.0) -> list[SseEvent]:  # noqa: ASYNC109
        """Every event until the stream ends."""
        out = []
        while (event := await self.next(timeout)) is not None:
            out.append(event)
        return out

    def close(self) -> None:
        """Drop the connection (as a network failure would)."""
        self.response.close()


async def open_stream(
    session: aiohttp.ClientSession,
    url: str,
    last_event_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> SseStream:
    """GET an event stream; raises AssertionError unless it answers 200 text/event-stream."""
    sent = dict(headers or {})
    if last_event_id is not None:
        sent["Last-Event-ID"] = last_event_id
    response = await session.get(url, headers=sent, timeout=aiohttp.ClientTimeout(total=None))
    assert response.status == 200, (response.status, await response.text())
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return SseStream(response, last_event_id)
