"""The web inspector as an operator uses it, in a real headless Chromium (issue 23).

Against a real ``turnstore serve`` holding 300 threads, tool calls with a
failing result, user messages and reasoning, conversation versions and a
long thread: search and paging reach thread 250, the list follows writes
through ``changed_since`` rather than re-listing, versions and snapshots
show, each event's position and time show on demand, cleared, unknown and
forbidden threads each say so, and at 1280 and 420 px no text column is
narrower than 200 px (measured in the page; screenshots in the test's
temporary directory). Chromium is Debian's, as in tests/test_browser.py
(installed with apt-get when missing; the test fails, never skips, when it
cannot start).
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from tests.support.browser import ensure_chromium, launched_browser
from tests.support.daemon import Daemon
from turnstore import AgentEventEnvelope, ConversationSnapshot, TurnstoreClient
from turnstore.server.access.scoped_engine import ScopedEngine
from turnstore.server.access.scopes import Scope
from turnstore.server.api.http import listings
from turnstore.server.storage.config import EngineConfig
from turnstore.server.storage.lmdb.engine import LmdbEngine
from turnstore.server.storage.values import NewEvent
from turnstore.v1 import turnstore_pb2 as pb

TOKEN = "inspector-test-token"
WAIT_MS = 20_000
THREADS = 300
# Written first, so that it is not among the 100 most recently written.
WANTED = 250
STAMP = "2026-03-04T05:06:07.123456Z"
# The text columns whose width is measured: prose, messages, JSON, ids.
TEXT_COLUMNS = (
    "#threads .id, #thread-title, .text, .said, .reasoning, .tool pre, .event pre, .meta-line"
)


def fleet(index: int) -> str:
    return f"fleet/thread-{index:03d}"


def envelope(
    event: dict[str, Any], sequence: int = 0, stamp: str | None = None
) -> AgentEventEnvelope:
    if stamp is None:
        return AgentEventEnvelope.new(event, sequence)
    return AgentEventEnvelope(f"evt-{sequence}", sequence, stamp, event)


TOOL_TURN = [
    envelope({"type": "user_message", "text": "What is the weather in Oslo?"}, 0, STAMP),
    envelope({"type": "reasoning_delta", "message_id": "r1", "delta": "The user wants "}, 1),
    envelope({"type": "reasoning_delta", "message_id": "r1", "delta": "a forecast."}, 2),
    envelope({"type": "tool_call_start", "id": "c1", "name": "weather", "input": {"city": "Oslo"}}),
    envelope({"type": "tool_result", "tool_call_id": "c1", "content": "sunny, 21 C"}),
    envelope({"type": "tool_call_start", "id": "c2", "name": "search", "input": {"q": "oslo"}}),
    envelope(
        {"type": "tool_result", "tool_call_id": "c2", "is_error": True, "content": "timed out"}
    ),
    envelope({"type": "text_delta", "message_id": "m1", "delta": "It is sunny "}),
    envelope({"type": "text_delta", "message_id": "m1", "delta": "in Oslo."}),
]


async def seed(target: str) -> None:
    async with TurnstoreClient(target, token=TOKEN) as client:
        order = [WANTED] + [i for i in range(THREADS) if i != WANTED]
        for index in order:
            await client.events.append(
                fleet(index),
                1,
                envelope({"type": "text_delta", "message_id": "m", "delta": f"thread {index}"}),
            )
        await client.events.append_many("tools/demo", 1, TOOL_TURN)
        await client.events.finish_turn("tools/demo", 1)
        for turn in range(1, 31):
            await client.events.append(
                "long/thread", turn, envelope({"type": "text_delta", "delta": f"turn {turn}"})
            )
            if turn < 30:
                await client.events.finish_turn("long/thread", turn)
        await client.events.finish_turn("empty/finished", 1)
        history = client.history("support/conv-1")
        for version in range(1, 4):
            messages = [
                {"role": "user", "content": f"message {n} of version {version}"}
                for n in range(version)
            ]
            await history.save(ConversationSnapshot(messages, [False] * version))


@pytest.fixture(scope="module")
def chromium() -> str:
    return ensure_chromium()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    """One daemon for the module (seeding 300 threads once), with a bearer token."""
    root = tmp_path_factory.mktemp("inspector")
    token_file = root / "token"
    token_file.write_text(TOKEN)
    process = Daemon(
        root / "data",
        extra_args=["--http-listen", "127.0.0.1:0", "--auth-token-file", str(token_file)],
    )
    base = process.start()["http"]
    try:
        asyncio.run(seed(process.target))
        yield process, base
    finally:
        assert process.stop() == 0, process.log_lines


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with launched_browser(chromium) as launched:
        yield launched


async def signed_in(
    browser: Browser, base: str, hash_: str = "", width: int = 1280
) -> tuple[Page, list[str]]:
    """A new page signed in with the token, and the script errors it will have."""
    page = await browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(base + "/" + hash_)
    await page.wait_for_selector("#login:not([hidden])", timeout=WAIT_MS)
    await page.fill("#token", TOKEN)
    await page.click("#login button")
    await expect(page.locator("#app")).to_be_visible(timeout=WAIT_MS)
    return page, errors


def item(thread: str) -> str:
    return f'#threads li[data-thread-id="{thread}"]'


async def test_signed_out_shows_only_the_sign_in_form(
    browser: Browser, seeded: tuple[Daemon, str]
) -> None:
    _, base = seeded
    page = await browser.new_page()
    await page.goto(base + "/")
    await expect(page.locator("#login")).to_be_visible(timeout=WAIT_MS)
    # `main { display: grid }` must not override `hidden`: no empty panel.
    await expect(page.locator("#app")).to_be_hidden()
    await expect(page.locator("#sidebar")).to_be_hidden()
    icon = await page.get_attribute('link[rel="icon"]', "href")
    assert icon is not None
    async with aiohttp.ClientSession() as http:
        answer = await http.get(base + icon)
        assert answer.status == 200 and "svg" in answer.headers["Content-Type"]


async def test_thread_250_is_found_by_search_and_by_paging(
    browser: Browser, seeded: tuple[Daemon, str]
) -> None:
    _, base = seeded
    page, errors = await signed_in(browser, base)
    wanted = item(fleet(WANTED))
    # Recent first: the newest 100, and thread 250 (written first) is not among them.
    await expect(page.locator("#threads li")).to_have_count(100, timeout=WAIT_MS)
    assert await page.locator(wanted).count() == 0
    await expect(page.locator("#list-hint")).to_contain_text("100 most recently written")

    # Paging the recent list reaches it too (it is the oldest), then no more.
    for shown in (200, 300):
        await page.click("#more")
        await expect(page.locator("#threads li")).to_have_count(shown, timeout=WAIT_MS)
        assert await page.locator(wanted).count() == 0
    await page.click("#more")
    await expect(page.locator("#threads li").last).to_have_attribute(
        "data-thread-id", fleet(WANTED), timeout=WAIT_MS
    )
    await expect(page.locator("#more")).to_be_hidden()

    await page.fill("#search", "fleet/thread-25")
    await expect(page.locator("#threads li")).to_have_count(10, timeout=WAIT_MS)
    await expect(page.locator(wanted)).to_be_visible()
    await expect(page.locator("#list-hint")).to_contain_text("10 threads starting with")

    await page.fill("#search", "")
    await expect(page.locator("#list-hint")).to_contain_text("100 most recently written")
    await page.select_option("#order", "id")
    await expect(page.locator("#threads li")).to_have_count(100, timeout=WAIT_MS)
    assert await page.locator(wanted).count() == 0
    for shown in (200, 300):
        await page.click("#more")
        await expect(page.locator("#threads li")).to_have_count(shown, timeout=WAIT_MS)
    await page.click("#more")  # past the fleet: the other threads, in id order
    await expect(page.locator("#more")).to_be_hidden(timeout=WAIT_MS)
    ids = [
        str(await node.get_attribute("data-thread-id"))
        for node in await page.locator("#threads li").all()
    ]
    assert ids == sorted(ids) and len(ids) == len(set(ids)) >= THREADS + 3
    await page.click(wanted)
    await expect(page.locator('[data-turn="1"] .text')).to_have_text(
        f"thread {WANTED}", timeout=WAIT_MS
    )
    await expect(page.locator(item(fleet(WANTED)) + " .meta")).to_contain_text("1 event ·")
    assert errors == []


async def test_the_list_follows_writes_without_re_listing(
    browser: Browser, seeded: tuple[Daemon, str]
) -> None:
    daemon, base = seeded
    page, errors = await signed_in(browser, base)
    await expect(page.locator("#threads li")).to_have_count(100, timeout=WAIT_MS)
    listings: list[str] = []
    page.on(
        "request",
        lambda request: listings.append(request.url) if "/v1/threads?" in request.url else None,
    )
    async with TurnstoreClient(daemon.target, token=TOKEN) as client:
        await client.events.append(
            "new/arrival", 1, envelope({"type": "text_delta", "delta": "hi"})
        )
        await expect(page.locator("#threads li").first).to_have_attribute(
            "data-thread-id", "new/arrival", timeout=WAIT_MS
        )
        # An older thread written again moves to the top too.
        await client.events.append(fleet(WANTED), 2, envelope({"type": "text_delta", "delta": "x"}))
        await expect(page.locator("#threads li").first).to_have_attribute(
            "data-thread-id", fleet(WANTED), timeout=WAIT_MS
        )
    await expect(page.locator(item(fleet(WANTED)) + " .meta")).to_contain_text("2 events")
    assert listings, "no listing request seen"
    # Only what changed was asked for: no listing of the newest threads again.
    assert all("changed_since=" in url for url in listings), listings
    assert errors == []


async def test_conversation_versions_and_content(
    browser: Browser, seeded: tuple[Daemon, str]
) -> None:
    _, base = seeded
    page, errors = await signed_in(browser, base)
    await page.click("#tab-conversations")
    key = '#keys li[data-key="support/conv-1"]'
    await expect(page.locator(key)).to_contain_text("version 3", timeout=WAIT_MS)
    await page.click(key)
    rows = page.locator("#versions tr.version")
    await expect(rows).to_have_count(3, timeout=WAIT_MS)
    assert [await row.get_attribute("data-version") for row in await rows.all()] == ["3", "2", "1"]
    await expect(page.locator("#snapshot-title")).to_have_text("Version 3 · 3 messages")
    messages = page.locator("#messages .message")
    await expect(messages).to_have_count(3)
    await expect(messages.nth(2).locator(".said")).to_have_text("message 2 of version 3")
    await expect(messages.nth(0).locator(".kind")).to_have_text("user")
    await expect(page.locator("#snapshot")).to_be_hidden()  # the stored JSON, one click away
    await page.click("#raw > summary")
    await expect(page.locator("#snapshot")).to_contain_text('"pinned"')
    await page.click('#versions tr[data-version="1"]')
    await expect(page.locator("#snapshot-title")).to_have_text(
        "Version 1 · 1 message", timeout=WAIT_MS
    )
    await expect(messages).to_have_count(1)
    await expect(messages.first.locator(".said")).to_have_text("message 0 of version 1")
    assert "version 3" not in (await page.text_content("#snapshot") or "")
    await page.goto(base + "/#key=" + urllib.parse.quote("no/such key", safe=""))
    await expect(page.locator("#conv-state")).to_contain_text(
        "Unknown conversation", timeout=WAIT_MS
    )
    assert errors == []


async def test_tools_messages_positions_and_filter(
    browser: Browser, seeded: tuple[Daemon, str], tmp_path: Path
) -> None:
    _, base = seeded
    page, errors = await signed_in(browser, base, "#thread=" + urllib.parse.quote("tools/demo"))
    turn = page.locator('[data-turn="1"]')
    await expect(turn.locator(".badge")).to_have_text("finished · 9 events", timeout=WAIT_MS)
    await expect(turn.locator(".user .said")).to_have_text("What is the weather in Oslo?")
    await expect(turn.locator(".reasoning .said")).to_have_text("The user wants a forecast.")
    await expect(turn.locator(".prose .text")).to_have_text("It is sunny in Oslo.")

    ok = turn.locator('.tool[data-call-id="c1"]')
    await expect(ok).to_contain_text("tool_call_start: weather")
    await expect(ok.locator(".result")).to_contain_text("sunny, 21 C")
    assert "failed" not in (await ok.get_attribute("class") or "")
    bad = turn.locator('.tool[data-call-id="c2"]')
    await expect(bad.locator(".result")).to_contain_text("timed out")
    await expect(bad).to_have_class("item tool failed")
    await expect(bad.locator(".result .kind")).to_have_text("tool_result · error")
    colours = await bad.evaluate(
        "(card) => [getComputedStyle(card).backgroundColor, "
        "getComputedStyle(card.previousElementSibling).backgroundColor]"
    )
    assert colours[0] != colours[1], colours  # the failed call stands out from the good one

    # Position, time and id on demand: hidden until asked for.
    user = turn.locator(".user")
    meta = user.locator(".meta-line")
    await expect(meta).to_be_hidden()
    await user.locator(".info").click()
    await expect(meta).to_be_visible()
    await expect(meta).to_have_text(f"position 0 · {STAMP} · id evt-0 · seq 0")
    await page.check("#show-details")
    await expect(turn.locator(".reasoning .meta-line")).to_contain_text(
        "positions 1\u20132 (2 events)"
    )

    await page.select_option("#type-filter", "tool_result")
    await expect(turn.locator(".tool")).to_have_count(2)
    await expect(turn.locator(".user")).to_be_hidden()
    await expect(turn.locator(".tool").first).to_be_visible()
    await page.select_option("#type-filter", "")
    await expect(turn.locator(".user")).to_be_visible()
    await page.screenshot(path=str(tmp_path / "tools-1280.png"))
    assert errors == []


async def test_long_thread_collapses_and_jumps_to_live(
    browser: Browser, seeded: tuple[Daemon, str]
) -> None:
    _, base = seeded
    page, errors = await signed_in(browser, base, "#thread=" + urllib.parse.quote("long/thread"))
    await expect(page.locator("#stream-state")).to_have_text("live", timeout=WAIT_MS)
    await expect(page.locator(".turn")).to_have_count(30)
    assert not await page.locator('[data-turn="1"]').evaluate("(node) => node.open")
    assert await page.locator('[data-turn="30"]').evaluate("(node) => node.open")
    assert "live" in (await page.get_attribute('[data-turn="30"]', "class") or "")
    # The page itself never scrolls; the thread pane does, under a fixed sidebar.
    await page.click("#expand-all")
    sizes = await page.evaluate(
        "() => [document.scrollingElement.scrollHeight, innerHeight,"
        " document.getElementById('thread').scrollHeight,"
        " document.getElementById('thread').clientHeight]"
    )
    assert sizes[0] <= sizes[1] and sizes[2] > sizes[3], sizes
    await page.evaluate("() => { document.getElementById('thread').scrollTop = 0; }")
    await expect(page.locator("#jump-live")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#follow-scroll")).not_to_be_checked(timeout=WAIT_MS)
    await page.click("#jump-live")
    await expect(page.locator("#jump-live")).to_be_hidden(timeout=WAIT_MS)
    await expect(page.locator("#follow-scroll")).to_be_checked(timeout=WAIT_MS)
    # The jump may scroll over a few frames: wait until the pane is at its end.
    await page.wait_for_function(
        "() => { const p = document.getElementById('thread');"
        " return p.scrollHeight - p.scrollTop - p.clientHeight < 2; }",
        timeout=WAIT_MS,
    )
    assert errors == []


async def test_cleared_unknown_empty_and_forbidden_threads_say_so(
    browser: Browser, seeded: tuple[Daemon, str]
) -> None:
    daemon, base = seeded
    async with TurnstoreClient(daemon.target, token=TOKEN) as client:
        await client.events.append(
            "doomed/thread", 1, envelope({"type": "text_delta", "delta": "bye"})
        )
        page, errors = await signed_in(
            browser, base, "#thread=" + urllib.parse.quote("doomed/thread")
        )
        await expect(page.locator('[data-turn="1"] .text')).to_have_text("bye", timeout=WAIT_MS)
        await expect(page.locator("#thread-state")).to_be_hidden()
        await client.events.clear("doomed/thread")
    state = page.locator("#thread-state")
    await expect(state).to_contain_text("This thread was cleared", timeout=WAIT_MS)
    await expect(state).to_have_class("state cleared")
    await expect(page.locator(item("doomed/thread") + " .meta")).to_have_text(
        "cleared: holds no events now"
    )
    await expect(page.locator(".turn")).to_have_count(0)

    await page.goto(base + "/#thread=" + urllib.parse.quote("no/such/thread"))
    await expect(state).to_contain_text("Unknown thread", timeout=WAIT_MS)
    await expect(page.locator("#stream-state")).to_have_text("waiting for events")

    await page.goto(base + "/#thread=" + urllib.parse.quote("empty/finished"))
    await expect(state).to_contain_text("Empty thread", timeout=WAIT_MS)
    await expect(state).to_contain_text("1 empty finished turn")

    async with aiohttp.ClientSession() as http:
        issued = await http.post(
            f"{base}/v1/session",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"scope": {"thread_prefix": "fleet/"}},
        )
        session: dict[str, Any] = await issued.json()
    scoped = await browser.new_page()
    await scoped.context.add_cookies(
        [{"name": "turnstore_session", "value": session["session"], "url": base}]
    )
    await scoped.goto(base + "/#thread=" + urllib.parse.quote("tools/demo"))
    forbidden = scoped.locator("#thread-state")
    await expect(forbidden).to_contain_text("Forbidden", timeout=WAIT_MS)
    await expect(forbidden).to_contain_text('threads starting with "fleet/"')
    await expect(scoped.locator(".turn")).to_have_count(0)
    assert errors == []


@pytest.mark.parametrize("width", [1280, 420, 400])
async def test_no_text_column_is_narrower_than_200_px(
    browser: Browser, seeded: tuple[Daemon, str], tmp_path: Path, width: int
) -> None:
    _, base = seeded
    page, errors = await signed_in(
        browser, base, "#thread=" + urllib.parse.quote("tools/demo"), width
    )
    await expect(page.locator('[data-turn="1"] .badge')).to_contain_text(
        "finished", timeout=WAIT_MS
    )
    await expect(page.locator("#threads li").first).to_be_visible(timeout=WAIT_MS)
    for details in (False, True):  # then with every event's position and time shown
        if details:
            await page.check("#show-details")
            await page.screenshot(path=str(tmp_path / f"inspector-{width}.png"))
        widths: list[list[Any]] = await page.evaluate(
            """(selector) => [...document.querySelectorAll(selector)]
                .filter((node) => node.getClientRects().length > 0)
                .map((node) => [node.className || node.id || node.tagName,
                                node.getBoundingClientRect().width])""",
            TEXT_COLUMNS,
        )
        assert len(widths) > 100, widths[:5]
        narrow = [entry for entry in widths if entry[1] < 200]
        assert narrow == [], narrow[:10]
        overflow = await page.evaluate("() => document.scrollingElement.scrollWidth")
        assert overflow <= width, overflow
    assert (tmp_path / f"inspector-{width}.png").stat().st_size > 0
    assert errors == []


# -- the listings the page reads, over plain HTTP, on both backends ------------


async def _get(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, Any]:
    async with http.get(url, headers=headers) as answer:
        return answer.status, await answer.json()


@pytest.mark.parametrize("backend", ["lmdb", "postgres"])
async def test_listings_page_search_and_respect_scopes(
    start_daemon: Any, tmp_path: Path, backend: str
) -> None:
    token_file = tmp_path / "listing-token"
    token_file.write_text(TOKEN)
    daemon = start_daemon(
        backend, "--http-listen", "127.0.0.1:0", "--auth-token-file", str(token_file)
    )
    base = json.loads(daemon.log_lines[0])["http"]  # the "serving" line
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    alice = ["alice/", "alice/1", "alice/2", "alice/3", "alice/4", "alice/5", "alice/é"]
    others = ["alicd", "alicex", "bob/1", "bob/2"]
    async with TurnstoreClient(daemon.target, token=TOKEN) as client:
        for thread in others + alice:
            await client.events.append(thread, 1, envelope({"type": "text_delta", "delta": "x"}))
        for key in ("alice/k1", "bob/k1"):
            await client.history(key).save(ConversationSnapshot([{"n": 1}], [False]))
    async with aiohttp.ClientSession() as http:
        # Paged by prefix, two at a time: every alice/ thread once, in order, nothing else.
        seen: list[str] = []
        after = ""
        while True:
            query = urllib.parse.urlencode({"prefix": "alice/", "after": after, "limit": 2})
            status, body = await _get(http, f"{base}/v1/threads?{query}", **bearer)
            assert status == 200, body
            seen += [thread["thread_id"] for thread in body["threads"]]
            if body["next_after"] is None:
                break
            after = body["next_after"]
        assert seen == alice
        status, body = await _get(http, f"{base}/v1/threads?prefix=zzz", **bearer)
        assert (status, body) == (200, {"threads": [], "next_after": None})

        # Threads written since a moment: that one, newest first, not the older ones.
        status, body = await _get(http, f"{base}/v1/threads?order=recent&limit=1", **bearer)
        since = body["threads"][0]["last_write_unix_nanos"] + 1
        async with TurnstoreClient(daemon.target, token=TOKEN) as client:
            await client.events.append("bob/2", 2, envelope({"type": "text_delta", "delta": "y"}))
        status, body = await _get(http, f"{base}/v1/threads?changed_since={since}", **bearer)
        assert status == 200 and [t["thread_id"] for t in body["threads"]] == ["bob/2"], body
        assert body["truncated"] is False
        status, body = await _get(http, f"{base}/v1/threads?changed_since=0&limit=3", **bearer)
        assert len(body["threads"]) == 3 and body["truncated"] is True

        # A scoped session lists only what its scope covers.
        async with http.post(
            f"{base}/v1/session",
            headers=bearer,
            json={
                "scope": {"thread_prefix": "alice/", "threads": ["bob/1"], "key_prefix": "alice/"}
            },
        ) as issued:
            session = (await issued.json())["session"]
        cookie = {"Cookie": f"turnstore_session={session}"}
        status, body = await _get(http, f"{base}/v1/threads?prefix=", **cookie)
        assert [t["thread_id"] for t in body["threads"]] == [*alice, "bob/1"]
        status, body = await _get(http, f"{base}/v1/threads?prefix=bob", **cookie)
        assert [t["thread_id"] for t in body["threads"]] == ["bob/1"]
        status, body = await _get(http, f"{base}/v1/threads?changed_since=0", **cookie)
        assert sorted(t["thread_id"] for t in body["threads"]) == sorted([*alice, "bob/1"])
        status, body = await _get(http, f"{base}/v1/conversations?prefix=", **cookie)
        assert [k["key"] for k in body["conversations"]] == ["alice/k1"]
        status, body = await _get(http, f"{base}/v1/conversations", **bearer)
        assert [k["key"] for k in body["conversations"]] == ["alice/k1", "bob/k1"]
        assert body["conversations"][0]["current_version"] == 1
        status, body = await _get(http, f"{base}/v1/versions/alice%2Fk1", **cookie)
        assert status == 200 and [v["version"] for v in body["versions"]] == [1]
        # Outside the scope reads as missing: 404, as for a key never written.
        for key in ("bob%2Fk1", "never"):
            status, body = await _get(http, f"{base}/v1/versions/{key}", **cookie)
            assert (status, body["error"]) == (404, "not_found")

        # Bounds: refused with 400 naming the parameter.
        for query, field in [
            ("prefix=a&limit=0", "limit"),
            ("prefix=a&limit=1001", "limit"),
            ("prefix=" + "a" * 257, "prefix"),
            ("changed_since=soon", "changed_since"),
            ("changed_since=1&prefix=a", "changed_since"),
            ("prefix=a&order=recent", "order"),
        ]:
            status, body = await _get(http, f"{base}/v1/threads?{query}", **bearer)
            assert status == 400 and field in body["message"], (query, body)
        status, body = await _get(http, f"{base}/v1/threads?prefix=a")
        assert status == 401


def test_a_scoped_change_listing_answers_the_same_past_its_read_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_CHANGES_READ changed threads, the scoped walk answers, and says the same.

    The bound is lowered so a few dozen threads pass it; the answer with and
    without the fallback must be identical (nothing shows how much others wrote).
    """
    opened = LmdbEngine.open(EngineConfig(tmp_path / "engine"))
    try:
        for index in range(40):
            owner = "mine" if index % 10 == 0 else "other"
            event = pb.EventEnvelope(event_id=f"e{index}", type="x", body=b"{}")
            opened.append(
                f"{owner}/{index:02d}", 1, [NewEvent(event.event_id, event.SerializeToString())]
            ).result()
        scope = Scope(thread_prefix="mine/", key_prefix=None)
        view = ScopedEngine(opened, scope)
        within = listings.changed_since(opened, scope.covers_thread, view, 0, 3)
        monkeypatch.setattr(listings, "MAX_CHANGES_READ", 16)
        past = listings.changed_since(opened, scope.covers_thread, view, 0, 3)
        assert within == past
        assert [t.thread_id for t in past[0]] == ["mine/30", "mine/20", "mine/10"]
        assert past[1] is True  # a fourth (mine/00) changed too
        assert listings.changed_since(opened, scope.covers_thread, view, 0, 4)[1] is False
    finally:
        opened.close()
