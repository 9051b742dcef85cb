"""The web inspector and the example chat page in a real headless Chromium.

Debian's ``chromium`` is driven by Playwright's bundled driver (no browser
download). The test installs chromium with apt-get when it is missing and
fails, never skips, when it cannot start it.
"""

from __future__ import annotations

import socket
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, expect

from tests.support.browser import ensure_chromium, launched_browser
from tests.support.daemon import Daemon, DaemonStarter
from turnstore import AgentEventEnvelope, TurnstoreClient

CHROMIUM = "/usr/bin/chromium"
EXAMPLES = Path(__file__).parent.parent / "examples"
TOKEN = "browser-test-token"
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def chromium() -> str:
    return ensure_chromium()


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with launched_browser(chromium) as launched:
        yield launched


@pytest.fixture
async def example_site() -> AsyncIterator[str]:
    """examples/ served over HTTP from its own origin, as a chat app would serve its page."""
    app = web.Application()
    app.router.add_static("/", EXAMPLES)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
def web_daemon(
    tmp_path: Path, example_site: str, start_daemon: DaemonStarter
) -> Iterator[tuple[Daemon, str]]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    process = start_daemon(
        "lmdb",
        "--http-listen",
        "127.0.0.1:0",
        "--auth-token-file",
        str(token_file),
        "--http-allow-origin",
        example_site,
        data_dir=tmp_path / "data",
    )
    first = process.serving
    yield process, first["http"]
    assert process.stop() == 0, process.log_lines


def delta(text: str, message: str = "m1") -> AgentEventEnvelope:
    return AgentEventEnvelope.new({"type": "text_delta", "message_id": message, "delta": text})


async def wait_text(page: Page, selector: str, want: str) -> None:
    """Wait until the element shows ``want``, then check its text is exactly that.

    Playwright's assertions poll outside the page's scripts, so the
    inspector's Content-Security-Policy (no eval) stays on.
    """
    await expect(page.locator(selector)).to_have_text(want, timeout=WAIT_MS)
    assert await page.text_content(selector) == want


def pieces(count: int, prefix: str) -> list[str]:
    return [f"{prefix}{i} " for i in range(count)]


async def test_inspector_lists_follows_and_survives_a_reload(
    browser: Browser, web_daemon: tuple[Daemon, str], tmp_path: Path
) -> None:
    daemon, base = web_daemon
    thread = "inspect/me now é"
    turn_two = '[data-turn="2"] .text[data-message="m1"]'
    async with TurnstoreClient(daemon.target, token=TOKEN) as client:
        await client.events.append_many(thread, 1, [delta("Hello "), delta("world")])
        await client.events.append(
            thread, 1, AgentEventEnvelope.new({"type": "tool_call", "name": "search", "q": "x"})
        )
        await client.events.finish_turn(thread, 1)
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(base + "/")
        await page.wait_for_selector("#login:not([hidden])", timeout=WAIT_MS)
        await page.fill("#token", "wrong")
        await page.click("#login button")
        await expect(page.locator("#login-error")).to_contain_text("refused", timeout=WAIT_MS)
        await page.fill("#token", TOKEN)
        await page.click("#login button")
        item = f'#threads li[data-thread-id="{thread}"]'
        await page.wait_for_selector(item, timeout=WAIT_MS)
        await page.click(item)
        await wait_text(page, '[data-turn="1"] .text', "Hello world")
        await page.wait_for_selector('[data-turn="1"] .tool', timeout=WAIT_MS)
        tool = await page.inner_text('[data-turn="1"] .tool')
        assert "tool_call: search" in tool and '"q": "x"' in tool

        written: list[str] = []
        for round_ in range(3):
            for text in pieces(5, f"r{round_}-"):
                await client.events.append(thread, 2, delta(text))
                written.append(text)
            await wait_text(page, turn_two, "".join(written))
            await page.reload()  # mid-turn; the cookie keeps the session
            # Written while the page reloads: must show up exactly once.
            await client.events.append(thread, 2, delta(f"[during reload {round_}] "))
            written.append(f"[during reload {round_}] ")
            await wait_text(page, turn_two, "".join(written))
        await client.events.finish_turn(thread, 2)
        await expect(page.locator('[data-turn="2"] .badge')).to_contain_text(
            "finished · 18 events", timeout=WAIT_MS
        )
        assert await page.text_content(turn_two) == "".join(written)
        assert await page.locator(".turn").count() == 2
        await page.screenshot(path=str(tmp_path / "inspector.png"), full_page=True)
        assert errors == []


async def test_inspector_with_a_scoped_session_shows_only_its_threads(
    browser: Browser, web_daemon: tuple[Daemon, str]
) -> None:
    daemon, base = web_daemon
    async with TurnstoreClient(daemon.target, token=TOKEN) as client:
        for tenant in ("alice", "bob"):
            await client.events.append(f"{tenant}/chat", 1, delta(f"{tenant} says hi"))
    async with aiohttp.ClientSession() as http:
        issued = await http.post(
            f"{base}/v1/session",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"scope": {"thread_prefix": "alice/"}},
        )
        session: dict[str, Any] = await issued.json()
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.context.add_cookies(
        [{"name": "turnstore_session", "value": session["session"], "url": base}]
    )
    await page.goto(base + "/")
    item = '#threads li[data-thread-id="alice/chat"]'
    await page.wait_for_selector(item, timeout=WAIT_MS)
    assert await page.locator("#threads li").count() == 1
    await page.click(item)
    await wait_text(page, '[data-turn="1"] .text', "alice says hi")
    assert errors == []


async def test_example_page_follows_one_turn_across_reloads(
    browser: Browser, web_daemon: tuple[Daemon, str], example_site: str, tmp_path: Path
) -> None:
    daemon, base = web_daemon
    thread = "chat/example ü"
    async with aiohttp.ClientSession() as http:
        # The chat backend holds the token and hands the page a session
        # scoped to the one thread it shows.
        issued = await http.post(
            f"{base}/v1/session",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"scope": {"threads": [thread], "read_only": True}},
        )
        session: dict[str, Any] = await issued.json()
    query = urllib.parse.urlencode(
        {"daemon": base, "thread": thread, "turn": "3", "session": session["session"]}
    )
    async with TurnstoreClient(daemon.target, token=TOKEN) as client:
        # Another turn's text and a non-text event must not show.
        await client.events.append(thread, 2, delta("other turn "))
        await client.events.finish_turn(thread, 2)
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(f"{example_site}/chat.html?{query}")
        written: list[str] = []
        for round_ in range(3):
            for text in pieces(6, f"c{round_}-"):
                await client.events.append(thread, 3, delta(text))
                written.append(text)
            await client.events.append(
                thread, 3, AgentEventEnvelope.new({"type": "tool_call", "name": "n"})
            )
            await wait_text(page, "#reply", "".join(written))
            await page.reload()
            await client.events.append(thread, 3, delta(f"<reload {round_}> "))
            written.append(f"<reload {round_}> ")
            await wait_text(page, "#reply", "".join(written))
        await client.events.finish_turn(thread, 3)
        await wait_text(page, "#state", "done")
        assert await page.text_content("#reply") == "".join(written)
        # After the end a reload shows the same text and does not reconnect.
        await page.reload()
        await wait_text(page, "#state", "done")
        assert await page.text_content("#reply") == "".join(written)
        await page.screenshot(path=str(tmp_path / "example.png"), full_page=True)
        assert errors == []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_a_browser_resumes_with_last_event_id_after_the_daemon_restarts(
    browser: Browser, tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    """The inspector's EventSource reconnects by itself and resumes exactly."""
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    process = start_daemon(
        "lmdb",
        "--http-listen",
        f"127.0.0.1:{port}",
        "--auth-token-file",
        str(token_file),
        data_dir=tmp_path / "data",
        start=False,
    )
    base = process.start()["http"]
    thread = "restart me"
    selector = '[data-turn="1"] .text'
    written: list[str] = []
    try:
        page = await browser.new_page()
        async with TurnstoreClient(process.target, token=TOKEN) as client:
            for text in pieces(5, "before-"):
                await client.events.append(thread, 1, delta(text))
                written.append(text)
        await page.goto(base + "/#thread=" + urllib.parse.quote(thread))
        await page.fill("#token", TOKEN)
        await page.click("#login button")
        await wait_text(page, selector, "".join(written))
        assert process.stop() == 0
        await expect(page.locator("#stream-state")).to_have_text("reconnecting", timeout=WAIT_MS)
        process.start()  # same data, same ports; the session cookie is still valid
        async with TurnstoreClient(process.target, token=TOKEN) as client:
            for text in pieces(5, "after-"):
                await client.events.append(thread, 1, delta(text))
                written.append(text)
            await client.events.finish_turn(thread, 1)
        await expect(page.locator('[data-turn="1"] .badge')).to_contain_text(
            "finished · 10 events", timeout=WAIT_MS
        )
        assert await page.text_content(selector) == "".join(written)
        await page.screenshot(path=str(tmp_path / "restarted.png"), full_page=True)
    finally:
        process.stop()


async def test_inspector_shows_turns_beyond_2_53_exactly(
    browser: Browser, web_daemon: tuple[Daemon, str]
) -> None:
    """Turns 2^64-1 and 2^64-2 are two cards, in order, each with its own text.

    The SSE payloads carry turns as JSON numbers; JSON.parse would round
    both to 2^64 (and 2^53+1 to 2^53), folding the turns into one card.
    """
    daemon, base = web_daemon
    thread = "inspect/huge turns"
    turns = [1, 2**53, 2**53 + 1, 2**64 - 2, 2**64 - 1]
    async with TurnstoreClient(daemon.target, token=TOKEN) as client:
        for turn in turns:
            await client.events.append(thread, turn, delta(f"text of {turn}"))
        await client.events.finish_turn(thread, 2**64 - 1)
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(base + "/#thread=" + urllib.parse.quote(thread))
    await page.fill("#token", TOKEN)
    await page.click("#login button")
    for turn in turns:
        await wait_text(page, f'[data-turn="{turn}"] .text', f"text of {turn}")
    await expect(page.locator(f'[data-turn="{2**64 - 1}"] .badge')).to_contain_text(
        "finished · 1 event", timeout=WAIT_MS
    )
    await expect(page.locator(f'[data-turn="{2**64 - 2}"] .badge')).to_have_text("being written")
    cards = page.locator(".turn")
    assert await cards.count() == len(turns)
    for index, turn in enumerate(turns):
        assert await cards.nth(index).get_attribute("data-turn") == str(turn)
        await expect(cards.nth(index).locator("h3")).to_contain_text(f"Turn {turn}")
    assert errors == []
