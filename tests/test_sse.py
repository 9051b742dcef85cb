"""The HTTP listener against a real daemon: event streams, JSON reads, access rules."""

from __future__ import annotations

import asyncio
import random
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
import trustme
import yarl

from tests.support.daemon import Daemon, DaemonStarter
from tests.support.eventually import eventually_async
from tests.support.sse_client import SseEvent, open_stream, strict_json
from turnstore import AgentEventEnvelope, ConversationSnapshot, TurnstoreClient
from turnstore.server.access.sessions import SessionSigner
from turnstore.server.storage.config import EngineConfig
from turnstore.server.storage.lmdb.engine import LmdbEngine
from turnstore.server.storage.values import NewEvent
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

TOKEN = "sse-test-token"
ODD_THREAD = "team/ü ß/chat 🙂/events"
ALLOWED_ORIGIN = "http://127.0.0.1:9"


def web(
    start_daemon: DaemonStarter, *extra: str, data_dir: Path | None = None
) -> tuple[Daemon, str]:
    """A daemon with the HTTP listener on a free port, and its base URL."""
    process = start_daemon("lmdb", "--http-listen", "127.0.0.1:0", *extra, data_dir=data_dir)
    assert process.serving["http"].startswith("http://127.0.0.1:"), process.serving
    return process, process.serving["http"]


@pytest.fixture(scope="module")
def web_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    """A daemon with the HTTP listener, no token, 0.2 s heartbeats (for the module)."""
    starter = DaemonStarter(tmp_path_factory.mktemp("sse"), shared=True)
    yield web(starter, "--http-heartbeat", "0.2s", "--http-allow-origin", ALLOWED_ORIGIN)
    starter.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def grpc_client(web_daemon: tuple[Daemon, str]) -> AsyncIterator[TurnstoreClient]:
    async with TurnstoreClient(web_daemon[0].target) as connected:
        yield connected


def events_url(base: str, thread: str, **params: object) -> str:
    quoted = urllib.parse.quote(thread, safe="")
    query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
    return f"{base}/v1/threads/{quoted}/events" + (f"?{query}" if query else "")


def delta(text: str) -> AgentEventEnvelope:
    return AgentEventEnvelope.new({"type": "text_delta", "delta": text})


def data_events(events: list[SseEvent]) -> list[SseEvent]:
    return [event for event in events if event.name == "message"]


async def test_reader_dropping_and_resuming_gets_every_event_once_in_order(
    web_daemon: tuple[Daemon, str], http: aiohttp.ClientSession, grpc_client: TurnstoreClient
) -> None:
    base = web_daemon[1]
    thread = f"resume-{random.getrandbits(48)}"
    turns, per_turn = 6, 40
    written: list[str] = []

    async def write() -> None:
        for turn in range(1, turns + 1):
            for index in range(per_turn):
                text = f"<{turn}.{index}>"
                await grpc_client.events.append(thread, turn, delta(text))
                written.append(text)
                if index % 7 == 0:
                    await asyncio.sleep(0)  # let the reader interleave
            await grpc_client.events.finish_turn(thread, turn)

    writer = asyncio.create_task(write())
    rng = random.Random(7)
    received: list[SseEvent] = []
    last_id: str | None = None
    reconnects = 0
    url = events_url(base, thread, until_turn_finished=turns)
    ended = False
    while not ended:
        stream = await open_stream(http, url, last_event_id=last_id)
        budget = rng.randint(3, 25)
        while budget > 0:
            event = await stream.next()
            if event is None or event.name == "end":
                ended = True
                break
            received.append(event)
            budget -= 1
        last_id = stream.last_id
        stream.close()
        reconnects += 1
    await writer
    messages = data_events(received)
    assert [e.json()["position"] for e in messages] == list(range(turns * per_turn))
    assert [e.json()["delta"] for e in messages] == written
    epoch = messages[0].id.split(":")[0] if messages[0].id else ""
    assert epoch.isdigit() and int(epoch) > 0
    assert [e.id for e in messages] == [f"{epoch}:{p}" for p in range(turns * per_turn)]
    finished = [e.json()["turn"] for e in received if e.name == "turn_finished"]
    assert finished == list(range(1, turns + 1)), "each finish marker exactly once"
    assert reconnects > 5
    # The end event's id makes a reconnect stop for good.
    response = await http.get(url, headers={"Last-Event-ID": f"{last_id}"})
    assert last_id is not None and last_id.endswith(":end")
    assert response.status == 204


async def test_markers_and_until_turn_finished_closes_the_stream(
    web_daemon: tuple[Daemon, str], http: aiohttp.ClientSession, grpc_client: TurnstoreClient
) -> None:
    base = web_daemon[1]
    thread = f"markers-{random.getrandbits(48)}"
    await grpc_client.events.append_many(thread, 1, [delta("a"), delta("b")])
    await grpc_client.events.finish_turn(thread, 1)
    stream = await open_stream(http, events_url(base, thread, until_turn_finished=2))
    head = [await stream.next() for _ in range(4)]
    assert [e.name for e in head if e] == ["message", "message", "turn_finished", "caught_up"]
    assert head[2] is not None and head[2].json() == {
        "turn": 1,
        "event_count": 2,
        "last_position": 1,
    }
    assert head[0] is not None and head[0].id is not None
    epoch = int(head[0].id.split(":")[0])
    assert head[3] is not None and head[3].json() == {"epoch": epoch, "next_position": 2}
    await grpc_client.events.append(thread, 2, delta("c"))
    event = await stream.next()
    assert event is not None and event.json()["delta"] == "c" and event.json()["turn"] == 2
    await grpc_client.events.finish_turn(thread, 2)
    tail = await stream.rest()
    assert [e.name for e in tail] == ["turn_finished", "end"]
    assert tail[1].json() == {"reason": "until_turn_finished"}
    assert tail[1].id == f"{epoch}:2:2:end"
    # Resuming from the finish marker (not the end event) has nothing left either.
    response = await http.get(
        events_url(base, thread, until_turn_finished=2), headers={"Last-Event-ID": f"{epoch}:2:2"}
    )
    assert response.status == 204
    # Without follow the stream ends once caught up.
    events = await (await open_stream(http, events_url(base, thread, follow=0))).rest()
    assert [e.name for e in events][-2:] == ["caught_up", "end"]
    assert events[-1].json() == {"reason": "caught_up"}


async def test_filters_mirror_replay(
    web_daemon: tuple[Daemon, str], http: aiohttp.ClientSession, grpc_client: TurnstoreClient
) -> None:
    base = web_daemon[1]
    thread = f"filters-{random.getrandbits(48)}"
    for turn in (1, 2, 3):
        await grpc_client.events.append_many(
            thread,
            turn,
            [delta(f"{turn}"), AgentEventEnvelope.new({"type": "tool_call", "name": "x"})],
        )
        await grpc_client.events.finish_turn(thread, turn)
    url = events_url(base, thread, follow=0, from_turn=2, to_turn=2, types="text_delta")
    events = await (await open_stream(http, url)).rest()
    assert [(e.name, e.json().get("delta")) for e in events] == [
        ("message", "2"),
        ("turn_finished", None),
        ("caught_up", None),
        ("end", None),
    ]
    after = await (await open_stream(http, events_url(base, thread, follow=0, after="3"))).rest()
    assert [e.json()["position"] for e in data_events(after)] == [4, 5]
    bad = await http.get(events_url(base, thread, from_turn=3, to_turn=2))
    assert bad.status == 400 and (await bad.json())["error"] == "invalid_argument"
    bad = await http.get(events_url(base, thread), headers={"Last-Event-ID": "nonsense"})
    assert bad.status == 400 and "Last-Event-ID" in (await bad.json())["message"]


async def test_a_resume_never_continues_into_a_cleared_threads_new_life(
    web_daemon: tuple[Daemon, str], http: aiohttp.ClientSession, grpc_client: TurnstoreClient
) -> None:
    base = web_daemon[1]
    thread = f"cleared-{random.getrandbits(48)}"
    await grpc_client.events.append_many(thread, 1, [delta("old"), delta("old")])
    stream = await open_stream(http, events_url(base, thread))
    assert [(await stream.next()) is not None for _ in range(3)] == [True] * 3  # 2 + caught_up
    stream.close()
    old_id = stream.last_id
    assert old_id is not None and old_id.endswith(":1:0")
    await grpc_client.events.clear(thread)
    await grpc_client.events.append_many(thread, 1, [delta("new"), delta("new"), delta("new")])
    resumed = await (await open_stream(http, events_url(base, thread), last_event_id=old_id)).rest()
    assert [e.name for e in resumed] == ["thread_cleared", "end"]
    assert resumed[1].json() == {"reason": "thread_cleared"}
    assert resumed[1].id is not None
    again = await http.get(events_url(base, thread), headers={"Last-Event-ID": resumed[1].id})
    assert again.status == 204
    # A live follower sees the clear as it happens.
    live = await open_stream(http, events_url(base, thread))
    head = [await live.next() for _ in range(4)]
    assert [e.name for e in head if e] == ["message"] * 3 + ["caught_up"]
    await grpc_client.events.clear(thread)
    assert [e.name for e in await live.rest()] == ["thread_cleared", "end"]


async def test_bodies_that_are_not_strict_json_arrive_as_valid_json(
    tmp_path: Path, http: aiohttp.ClientSession, start_daemon: DaemonStarter
) -> None:
    thread = "odd-bodies"
    # The daemon now refuses JSON bodies that are not strict JSON objects, but
    # a store written before that may hold them: write those with the engine.
    old = [
        (b'{"a": NaN}', ""),
        (b"not json at all \xff", ""),
        (b"[1, 2]", ""),
        (b"plain", "text/plain"),
        (b'{"b": Infinity}', "application/json; charset=utf-8"),
    ]
    engine = LmdbEngine.open(EngineConfig(tmp_path / "data"))
    try:
        events = [
            pb.EventEnvelope(event_id=f"old{i}", type="raw", body=body, content_type=kind)
            for i, (body, kind) in enumerate(old)
        ]
        new_events = [NewEvent(e.event_id, e.SerializeToString()) for e in events]
        assert engine.append(thread, 1, new_events).result() == [0, 1, 2, 3, 4]
    finally:
        engine.close()
    process, base = web(start_daemon, data_dir=tmp_path / "data")
    try:
        async with grpc.aio.insecure_channel(process.target) as channel:
            await pb_grpc.EventStoreServiceStub(channel).Append(
                pb.AppendRequest(
                    thread_id=thread,
                    turn=1,
                    events=[
                        pb.EventEnvelope(
                            event_id="new2", type="raw", body=b'{"ok": true, "position": "mine"}'
                        ),
                    ],
                )
            )
        stream = await open_stream(http, events_url(base, thread, follow=0))
        parsed = [strict_json(e.data) for e in data_events(await stream.rest())]
        assert [p.get("body_error", "")[:12] for p in parsed] == [
            "not strict J",
            "not strict J",
            "not a JSON o",
            "content type",
            "not strict J",
            "",
        ]
        assert parsed[1]["raw_body"] == "not json at all \ufffd"
        assert parsed[3]["raw_body"] == "plain"
        # Header fields win over body keys of the same name.
        assert parsed[5]["position"] == 5 and parsed[5]["ok"] is True
        turns = await (await http.get(f"{base}/v1/threads/{thread}/turns")).text()
        events_json = strict_json(turns)["turns"][0]["events"]
        assert ["body_error" in e for e in events_json] == [True] * 5 + [False]
    finally:
        assert process.stop() == 0


async def test_thread_ids_with_slashes_spaces_and_non_ascii(
    web_daemon: tuple[Daemon, str], http: aiohttp.ClientSession, grpc_client: TurnstoreClient
) -> None:
    base = web_daemon[1]
    plain = ODD_THREAD.rsplit("/", 1)[0]  # its own thread, without "/events"
    await grpc_client.events.append(ODD_THREAD, 1, delta("odd"))
    await grpc_client.events.append(plain, 1, delta("plain"))
    events = await (await open_stream(http, events_url(base, ODD_THREAD, follow=0))).rest()
    assert [e.json()["delta"] for e in data_events(events)] == ["odd"]
    events = await (await open_stream(http, events_url(base, plain, follow=0))).rest()
    assert [e.json()["delta"] for e in data_events(events)] == ["plain"]
    quoted = urllib.parse.quote(ODD_THREAD, safe="")
    turns = await (await http.get(f"{base}/v1/threads/{quoted}/turns")).json()
    assert turns["thread_id"] == ODD_THREAD
    assert [e["delta"] for e in turns["turns"][0]["events"]] == ["odd"]
    listed = await (await http.get(f"{base}/v1/threads?limit=1000")).json()
    assert {ODD_THREAD, plain} <= {t["thread_id"] for t in listed["threads"]}
    key = "users/ünï côde/1"
    await grpc_client.history(key).save(ConversationSnapshot(messages=[{"r": 1}], pinned=[True]))
    snapshot = await (
        await http.get(f"{base}/v1/conversations/{urllib.parse.quote(key, safe='')}")
    ).json()
    assert (snapshot["key"], snapshot["version"]) == (key, 1)
    assert snapshot["snapshot"]["messages"] == [{"r": 1}]
    missing = await http.get(f"{base}/v1/conversations/none-{random.getrandbits(32)}")
    assert missing.status == 404
    bad = await http.get(f"{base}/v1/threads/%FF%FE/turns")
    assert bad.status == 400


async def test_thread_listing_pages_and_most_recent_first(
    web_daemon: tuple[Daemon, str], http: aiohttp.ClientSession, grpc_client: TurnstoreClient
) -> None:
    base = web_daemon[1]
    prefix = f"list-{random.getrandbits(32)}"
    names = [f"{prefix}-{i}" for i in range(3)]
    for name in reversed(names):  # written last = listed first by recency
        await grpc_client.events.append(name, 1, delta("x"))
    page = await (await http.get(f"{base}/v1/threads?limit=2&after={prefix}")).json()
    assert [t["thread_id"] for t in page["threads"]] == names[:2]
    assert page["next_after"] == names[1]
    rest = await (await http.get(f"{base}/v1/threads?limit=2&after={names[1]}")).json()
    assert rest["threads"][0]["thread_id"] == names[2]
    recent = await (await http.get(f"{base}/v1/threads?order=recent&limit=1000")).json()
    ours = [t["thread_id"] for t in recent["threads"] if t["thread_id"].startswith(prefix)]
    assert ours == names
    stamps = [t["last_write_unix_nanos"] for t in recent["threads"]]
    assert stamps == sorted(stamps, reverse=True)


async def test_idle_streams_get_heartbeats(
    web_daemon: tuple[Daemon, str], http: aiohttp.ClientSession
) -> None:
    base = web_daemon[1]
    stream = await open_stream(http, events_url(base, f"idle-{random.getrandbits(48)}"))
    caught_up = await stream.next()
    assert caught_up is not None and caught_up.name == "caught_up"
    # The next read blocks until heartbeats arrive; two of them prove they repeat.
    reader = asyncio.create_task(stream.next(timeout=60))
    await eventually_async(
        lambda: reader.done() or len(stream.comments) >= 2, what="two heartbeats"
    )
    assert not reader.done()
    reader.cancel()
    stream.close()
    assert stream.comments[:2] == ["heartbeat", "heartbeat"]


async def test_cors_only_for_allowed_origins_and_loopback_hosts_only(
    web_daemon: tuple[Daemon, str], http: aiohttp.ClientSession
) -> None:
    base = web_daemon[1]
    allowed = await http.get(f"{base}/v1/threads?limit=1", headers={"Origin": ALLOWED_ORIGIN})
    assert allowed.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    other = await http.get(f"{base}/v1/threads?limit=1", headers={"Origin": "http://evil.test"})
    assert other.status == 200 and "Access-Control-Allow-Origin" not in other.headers
    preflight = await http.options(
        f"{base}/v1/session",
        headers={"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status == 204
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    refused = await http.options(f"{base}/v1/session", headers={"Origin": "http://evil.test"})
    assert refused.status == 403
    rebound = await http.get(f"{base}/v1/threads", headers={"Host": "evil.test:80"})
    assert rebound.status == 403 and (await rebound.json())["error"] == "host_not_allowed"
    assert (await http.get(f"{base}/v1/threads", headers={"Host": "localhost"})).status == 200


async def test_wrong_or_missing_token_is_refused_with_401(
    tmp_path: Path, http: aiohttp.ClientSession, start_daemon: DaemonStarter
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    process, base = web(start_daemon, "--auth-token-file", str(token_file))
    try:
        thread_url = events_url(base, "t", follow=0)
        for url in (f"{base}/v1/threads", thread_url, f"{base}/v1/conversations/k"):
            missing = await http.get(url)
            assert missing.status == 401 and missing.headers["WWW-Authenticate"].startswith(
                "Bearer"
            )
            wrong = await http.get(url, headers={"Authorization": "Bearer nope"})
            assert wrong.status == 401
        good = await http.get(f"{base}/v1/threads", headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status == 200
        assert (await http.post(f"{base}/v1/session")).status == 401
        issued = await http.post(f"{base}/v1/session", headers={"Authorization": f"Bearer {TOKEN}"})
        body = await issued.json()
        assert issued.status == 200 and body["auth"] is True
        cookie = issued.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        session = body["session"]
        by_query = await http.get(f"{base}/v1/threads?session={urllib.parse.quote(session)}")
        assert by_query.status == 200
        # A cookie jar that keeps cookies of IP hosts, as a browser does.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            await browser.post(f"{base}/v1/session", headers={"Authorization": f"Bearer {TOKEN}"})
            assert (await browser.get(f"{base}/v1/threads")).status == 200
            stream = await open_stream(browser, thread_url)
            assert [e.name for e in await stream.rest()] == ["caught_up", "end"]
            state = await (await browser.get(f"{base}/v1/session")).json()
            assert (state["auth"], state["authenticated"], state["scope"]) == (True, True, {})
            await browser.delete(f"{base}/v1/session")
            assert (await browser.get(f"{base}/v1/threads")).status == 401
        forged = session[:-2] + ("AA" if not session.endswith("AA") else "BB")
        assert (await http.get(f"{base}/v1/threads?session={forged}")).status == 401
        other_key = SessionSigner("another-token", 3600).issue()[0]
        assert (await http.get(f"{base}/v1/threads?session={other_key}")).status == 401
        # The inspector page itself is public; it holds no data.
        assert (await http.get(f"{base}/")).status == 200
    finally:
        assert process.stop() == 0


def test_sessions_expire_and_cannot_be_forged() -> None:
    now = [1_000_000.0]
    signer = SessionSigner("token", 60, clock=lambda: now[0])
    token, expiry = signer.issue()
    assert expiry == 1_000_060 and signer.valid(token)
    payload, _, signature = token.rpartition(".")
    longer = payload.replace(".1000060.", ".9000060.")
    assert not signer.valid(f"{longer}.{signature}")
    assert not SessionSigner("other", 60, clock=lambda: now[0]).valid(token)
    now[0] = 1_000_060.0
    assert not signer.valid(token)
    assert not signer.valid("") and not signer.valid(None) and not signer.valid("v1.x.y.z")
    assert signer.bearer_ok("Bearer token") and not signer.bearer_ok("Bearer tokens")


async def test_open_streams_end_when_the_daemon_stops(
    http: aiohttp.ClientSession, start_daemon: DaemonStarter
) -> None:
    process, base = web(start_daemon)
    streams = [await open_stream(http, events_url(base, f"stop-{i}")) for i in range(3)]
    for stream in streams:
        first = await stream.next()
        assert first is not None and first.name == "caught_up"
    assert process.stop(timeout=30) == 0
    for stream in streams:
        # Closed without an end event, so a browser reconnects once it is back.
        assert await stream.rest(timeout=10) == []


async def test_https_with_the_daemons_tls_settings(
    tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    issued.private_key_and_cert_chain_pem.write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    process = start_daemon(
        "lmdb", "--http-listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)
    )
    base = process.serving["http"]
    try:
        assert base.startswith("https://127.0.0.1:")
        trusted = ssl.create_default_context()
        ca.configure_trust(trusted)
        async with aiohttp.ClientSession() as http:
            response = await http.get(f"{base}/v1/threads", ssl=trusted)
            assert response.status == 200
            stream = await http.get(events_url(base, "tls", follow=0), ssl=trusted)
            assert (await stream.text()).count("event: ") == 2  # caught_up, end
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"{base}/v1/threads")  # the system CAs do not trust it
            with pytest.raises(aiohttp.ClientError):
                await http.get(base.replace("https:", "http:") + "/v1/threads")
    finally:
        assert process.stop() == 0


async def test_a_dropped_browser_leaves_no_follower_behind(
    web_daemon: tuple[Daemon, str], http: aiohttp.ClientSession
) -> None:
    daemon, base = web_daemon

    async def open_replays() -> int:
        async with grpc.aio.insecure_channel(daemon.target) as channel:
            stats = await pb_grpc.AdminServiceStub(channel).GetStats(pb.GetStatsRequest())
            return int(stats.open_replays)

    thread = f"dropped-{random.getrandbits(48)}"
    streams = [await open_stream(http, events_url(base, thread)) for _ in range(5)]
    for stream in streams:
        assert (await stream.next()) is not None  # caught_up: the follower is registered
    assert await open_replays() >= 5
    for stream in streams:
        stream.close()
    # The daemon notices at its next heartbeat write (0.2 s here).

    async def none_open() -> bool:
        return await open_replays() == 0

    await eventually_async(none_open, what="the closed streams' followers to be forgotten")


async def test_malformed_requests_get_a_4xx_never_a_500(
    web_daemon: tuple[Daemon, str], http: aiohttp.ClientSession
) -> None:
    base = web_daemon[1]
    events = f"{base}/v1/threads/t/events"
    bad = [
        (f"{events}?from_turn=-1", {}),
        (f"{events}?from_turn=\u00b2", {}),
        (f"{events}?to_turn={1 << 64}", {}),
        (f"{events}?follow=maybe", {}),
        (f"{events}?after=1:2:3:4", {}),
        (f"{events}?after=-2", {}),
        (f"{events}?after={1 << 63}", {}),
        (f"{events}?types=" + ",".join(f"t{i}" for i in range(65)), {}),
        (events, {"Last-Event-ID": "9" * 300}),
        (events, {"Last-Event-ID": "1:\u0663"}),
        (f"{base}/v1/threads/{'x' * 300}/events", {}),
        (f"{base}/v1/threads/%ZZ/turns", {}),
        (f"{base}/v1/threads/t/turns?limit=0", {}),
        (f"{base}/v1/threads/t/nothing", {}),
        (f"{base}/v1/threads?order=sideways", {}),
        (f"{base}/v1/threads?limit=abc", {}),
        (f"{base}/v1/conversations/k?version=0", {}),
    ]
    for url, headers in bad:
        # Sent as written: %ZZ must reach the daemon undecoded.
        response = await http.get(yarl.URL(url, encoded="%ZZ" in url), headers=headers)
        assert 400 <= response.status < 500, (url, headers, response.status)
        if response.status != 404 or "nothing" in url:
            body = await response.json()
            assert body["error"] in ("invalid_argument", "not_found"), (url, body)
    session = await http.get(f"{base}/v1/session?session=v1.\u00b2.x.y")
    assert session.status == 200  # the session route answers, and says auth is off
    assert (await http.head(events)).status == 405


async def test_stalled_browsers_are_ended_within_the_follower_budget_and_resume(
    start_daemon: DaemonStarter,
) -> None:
    """SSE streams share the gRPC followers' budget; an ended one resumes exactly."""
    process, base = web(
        start_daemon, "--follower-budget", "64KiB", "--followers-total-budget", "256KiB"
    )
    thread, readers, events = "stalled", 8, 6000
    body = "x" * 1000
    try:
        async with (
            aiohttp.ClientSession() as http,
            TurnstoreClient(process.target) as client,
        ):
            stalled = [await open_stream(http, events_url(base, thread)) for _ in range(readers)]
            for stream in stalled:
                first = await stream.next()
                assert first is not None and first.name == "caught_up"
            for _ in range(0, events, 500):
                await client.events.append_many(
                    thread,
                    1,
                    [
                        AgentEventEnvelope.new({"type": "text_delta", "delta": body})
                        for _ in range(500)
                    ],
                )
            await client.events.finish_turn(thread, 1)

            def ended() -> int:
                return sum(
                    1
                    for line in process.log_lines
                    if "follower_too_slow" in line and '"http"' in line
                )

            await eventually_async(ended, 60, what="a stream to be ended")
            # Every reader now reads on, resuming after its last id when its
            # stream was ended: it gets each event once, in order.
            for stream in stalled:
                positions: list[int] = []
                last_id = stream.last_id
                source = stream
                while True:
                    try:
                        event = await source.next()
                    except (aiohttp.ClientError, ConnectionError):
                        event = None
                    if event is None:
                        last_id = source.last_id
                        source.close()
                        source = await open_stream(
                            http, events_url(base, thread), last_event_id=last_id
                        )
                        continue
                    if event.name == "message":
                        positions.append(event.json()["position"])
                    if event.name == "turn_finished":
                        break
                source.close()
                assert positions == list(range(events))
    finally:
        assert process.stop() == 0
