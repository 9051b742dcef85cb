"""Scoped and revocable access on both listeners, against real daemons.

Two tenants, ``alice/`` and ``bob/``, share one daemon: over HTTP each
holds a browser session minted for their prefix, over gRPC each a token of
their own from ``--auth-tokens-file``. Neither can see the other's threads,
events, turns, snapshots or listing entries, and what they get for the
other's thread is byte for byte what they get for a thread that does not
exist. Sessions can be revoked one at a time, across restarts, and an open
event stream ends within one heartbeat of its session expiring or being
revoked.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl

from tests.support.daemon import Daemon, DaemonStarter
from tests.support.eventually import eventually_async
from tests.support.sse_client import open_stream
from turnstore import (
    AgentEventEnvelope,
    CaughtUp,
    ConversationSnapshot,
    CursorOutOfRangeError,
    PermissionDeniedError,
    TurnstoreClient,
)
from turnstore.server.access.scoped_engine import ScopedEngine
from turnstore.server.access.scopes import ScopeError, parse_scope
from turnstore.server.storage.config import EngineConfig
from turnstore.server.storage.lmdb.engine import LmdbEngine
from turnstore.server.storage.values import NewEvent
from turnstore.v1 import turnstore_pb2 as pb

ADMIN = "admin-token"
ALICE = "alice-token"
BOB = "bob-token"
READER = "reader-token"
TOKENS = [
    {"token": ALICE, "scope": {"thread_prefix": "alice/", "key_prefix": "alice/"}},
    {"token": BOB, "scope": {"thread_prefix": "bob/", "key_prefix": "bob/"}},
    {"token": READER, "scope": {"read_only": True}},
]


def access_args(tmp_path: Path, *extra: str) -> list[str]:
    admin = tmp_path / "admin-token"
    admin.write_text(ADMIN + "\n")
    scoped = tmp_path / "tokens.jsonl"
    scoped.write_text("# tenants\n" + "\n".join(json.dumps(entry) for entry in TOKENS) + "\n")
    return [
        "--auth-token-file",
        str(admin),
        "--auth-tokens-file",
        str(scoped),
        "--http-listen",
        "127.0.0.1:0",
        *extra,
    ]


def http_base(daemon: Daemon) -> str:
    for line in daemon.log_lines:
        parsed = json.loads(line)
        if parsed.get("event") == "serving":
            return str(parsed["http"])
    raise AssertionError("no serving line")


def quoted(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def delta(text: str) -> AgentEventEnvelope:
    return AgentEventEnvelope.new({"type": "text_delta", "delta": text})


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def mint(
    http: aiohttp.ClientSession, base: str, token: str, scope: dict[str, Any] | None
) -> dict[str, Any]:
    body = None if scope is None else json.dumps({"scope": scope})
    response = await http.post(f"{base}/v1/session", headers=bearer(token), data=body)
    assert response.status == 200, await response.text()
    minted: dict[str, Any] = await response.json()
    return minted


async def write_tenants(target: str) -> None:
    async with TurnstoreClient(target, token=ADMIN) as admin:
        for tenant in ("alice", "bob"):
            thread = f"{tenant}/chat"
            await admin.events.append(thread, 1, delta(f"{tenant} secret"))
            await admin.events.finish_turn(thread, 1)
            await admin.history(f"{tenant}/conversation").save(
                ConversationSnapshot([{"role": "user", "content": f"{tenant} secret"}], [False])
            )


class Reader:
    """Every HTTP read of one session, as (status, body text) pairs."""

    def __init__(self, http: aiohttp.ClientSession, base: str, session: str) -> None:
        self.http, self.base, self.session = http, base, session

    async def get(self, path: str, **params: str) -> tuple[int, str]:
        query = urllib.parse.urlencode({"session": self.session, **params})
        response = await self.http.get(f"{self.base}{path}?{query}")
        return response.status, await response.text()

    async def thread_ids(self, **params: str) -> list[str]:
        status, text = await self.get("/v1/threads", **params)
        assert status == 200, text
        return [thread["thread_id"] for thread in json.loads(text)["threads"]]

    async def thread(self, thread_id: str) -> list[tuple[int, str]]:
        """The thread's turns and its event stream (not following), thread id blanked."""
        path = f"/v1/threads/{quoted(thread_id)}"
        answers = [
            await self.get(f"{path}/turns"),
            await self.get(f"{path}/events", follow="0"),
            await self.get(f"{path}/events", follow="0", after="0:0"),
        ]
        return [
            (status, text.replace(json.dumps(thread_id)[1:-1], "<id>")) for status, text in answers
        ]

    async def conversation(self, key: str) -> list[tuple[int, str]]:
        return [
            await self.get(f"/v1/conversations/{quoted(key)}"),
            await self.get(f"/v1/conversations/{quoted(key)}", version="1"),
        ]


async def test_two_scoped_sessions_cannot_see_each_others_data(
    tmp_path: Path,
    start_daemon: DaemonStarter,
    backend: str,
    http: aiohttp.ClientSession,
) -> None:
    daemon = start_daemon(backend, *access_args(tmp_path))
    base = http_base(daemon)
    await write_tenants(daemon.target)
    # The chat backend holds the full token and mints one session per user.
    tenant_scope = {"thread_prefix": "alice/", "key_prefix": "alice/"}
    alice = Reader(http, base, (await mint(http, base, ADMIN, tenant_scope))["session"])
    bob_scope = {"threads": ["bob/chat"], "keys": ["bob/conversation"], "read_only": True}
    bob = Reader(http, base, (await mint(http, base, ADMIN, bob_scope))["session"])

    assert await alice.thread_ids() == ["alice/chat"]
    assert await alice.thread_ids(order="recent") == ["alice/chat"]
    assert await bob.thread_ids() == ["bob/chat"]
    assert await bob.thread_ids(after="alice/chat", limit="1") == ["bob/chat"]

    own = await alice.thread("alice/chat")
    assert [status for status, _ in own] == [200, 200, 200] and "alice secret" in own[0][1]
    # Bob's thread under Alice's session is exactly a thread that does not exist.
    assert await alice.thread("bob/chat") == await alice.thread("bob/nobody")
    assert await bob.thread("alice/chat") == await bob.thread("alice/nobody")
    assert "secret" not in str(await alice.thread("bob/chat"))
    # An id no thread can have is refused the same way inside and outside a scope.
    full = Reader(http, base, (await mint(http, base, ADMIN, None))["session"])
    too_long = "bob/" + "x" * 600
    refused = await alice.thread(too_long)
    assert refused == await full.thread(too_long) and refused[0][0] == 400
    assert await alice.conversation("bob/conversation") == await alice.conversation("bob/none")
    assert (await alice.conversation("bob/conversation"))[0][0] == 404
    assert (await bob.conversation("bob/conversation"))[0][0] == 200
    assert await bob.conversation("alice/conversation") == await bob.conversation("alice/none")
    # An open stream of Bob's thread under Alice's session gets nothing of it.
    stream = await open_stream(http, f"{base}/v1/threads/bob%2Fchat/events?session={alice.session}")
    first = await stream.next()
    assert first is not None and first.name == "caught_up"
    assert first.json() == {"epoch": 0, "next_position": 0}
    async with TurnstoreClient(daemon.target, token=ADMIN) as admin:
        await admin.events.append("bob/chat", 2, delta("bob again"))
    with pytest.raises(TimeoutError):
        await stream.next(timeout=1.0)
    stream.close()


async def test_sessions_never_exceed_the_minting_tokens_scope(
    tmp_path: Path, start_daemon: DaemonStarter, http: aiohttp.ClientSession
) -> None:
    daemon = start_daemon("lmdb", *access_args(tmp_path))
    base = http_base(daemon)
    await write_tenants(daemon.target)
    # Alice's backend token mints no session for Bob's prefix, nor for everything.
    for scope in ({"thread_prefix": "bob/"}, {}, {"thread_prefix": "alic"}):
        response = await http.post(
            f"{base}/v1/session", headers=bearer(ALICE), data=json.dumps({"scope": scope})
        )
        assert response.status == 403, scope
        assert (await response.json())["error"] == "permission_denied"
    # Without a body, a session of the token's own scope.
    minted = await mint(http, base, ALICE, None)
    assert minted["scope"] == {"key_prefix": "alice/", "thread_prefix": "alice/"}
    narrower = await mint(http, base, ALICE, {"threads": ["alice/chat"], "read_only": True})
    assert await Reader(http, base, narrower["session"]).thread_ids() == ["alice/chat"]
    # A scoped bearer token reads over HTTP with its scope too.
    listing = await http.get(f"{base}/v1/threads", headers=bearer(BOB))
    assert [t["thread_id"] for t in (await listing.json())["threads"]] == ["bob/chat"]
    # Malformed scopes are refused with 400 naming the field.
    for body, field in (
        ({"scope": {"thread_prefix": 7}}, "scope.thread_prefix"),
        ({"scope": {"threads": ["x"] * 1001}}, "scope.threads"),
        ({"scope": {"tenant": "x"}}, "unknown field"),
        ({"scope": []}, "scope"),
        ({"scoop": {}}, "body"),
    ):
        response = await http.post(
            f"{base}/v1/session", headers=bearer(ADMIN), data=json.dumps(body)
        )
        assert response.status == 400, body
        refused = await response.json()
        assert refused["error"] == "invalid_argument" and field in refused["message"], refused
    # A scope too large for a session token is refused, not truncated.
    many = {"threads": [f"alice/{'x' * 200}-{i}" for i in range(40)]}
    response = await http.post(
        f"{base}/v1/session", headers=bearer(ADMIN), data=json.dumps({"scope": many})
    )
    assert response.status == 400 and "too large" in (await response.json())["message"]


async def test_two_scoped_grpc_tokens_cannot_see_each_others_data(
    tmp_path: Path, start_daemon: DaemonStarter, backend: str
) -> None:
    daemon = start_daemon(backend, *access_args(tmp_path))
    async with (
        TurnstoreClient(daemon.target, token=ALICE) as alice,
        TurnstoreClient(daemon.target, token=BOB) as bob,
        TurnstoreClient(daemon.target, token=READER) as reader,
        TurnstoreClient(daemon.target, token=ADMIN) as admin,
    ):
        # Each tenant writes its own threads and conversations, with its own token.
        for client, tenant in ((alice, "alice"), (bob, "bob")):
            await client.events.append(f"{tenant}/chat", 1, delta(f"{tenant} secret"))
            await client.events.finish_turn(f"{tenant}/chat", 1)
            async with client.events.appender() as appender:
                await appender.append(f"{tenant}/streamed", 1, delta("x"))
            await client.history(f"{tenant}/conversation").save(
                ConversationSnapshot([f"{tenant} secret"], [True])
            )

        async def seen(client: TurnstoreClient, thread: str, key: str) -> list[Any]:
            replayed = [repr(item) async for item in client.events.replay(thread)]
            return [
                await client.events.get_turn(thread, 1),
                await client.events.get_turns(thread),
                await client.events.get_events(thread),
                await client.events.event_count(thread),
                replayed,
                await client.history(key).load(),
                await client.history(key).list_versions(),
            ]

        assert (await seen(alice, "bob/chat", "bob/conversation")) == (
            await seen(alice, "bob/none", "bob/none")
        )
        assert (await seen(bob, "alice/chat", "alice/conversation")) == (
            await seen(bob, "alice/none", "alice/none")
        )
        mine = await seen(alice, "alice/chat", "alice/conversation")
        assert mine[0] is not None and mine[3] == 1 and mine[5] is not None
        replay = [item async for item in alice.events.replay("bob/chat")]
        assert len(replay) == 1 and isinstance(replay[0], CaughtUp)

        # A cursor into Bob's thread is as unknown to Alice as one into no thread.
        async def refusal(client: TurnstoreClient, thread: str) -> str:
            with pytest.raises(CursorOutOfRangeError) as refused:
                _ = [item async for item in client.events.replay(thread, after=0)]
            return str(refused.value).replace(thread, "<id>")

        assert await refusal(alice, "bob/chat") == await refusal(alice, "bob/none")
        assert [item async for item in bob.events.replay("bob/chat", after=0)][-1] is not None
        assert [t.thread_id async for t in alice.admin.list_threads()] == [
            "alice/chat",
            "alice/streamed",
        ]
        assert [k.key async for k in bob.admin.list_keys()] == ["bob/conversation"]
        assert len([t async for t in reader.admin.list_threads()]) == 4

        # Writes outside the scope, and any write with the read-only token, are refused.
        for attempt in (
            alice.events.append("bob/chat", 2, delta("intrusion")),
            alice.events.finish_turn("bob/chat", 2),
            alice.events.clear("bob/chat"),
            alice.history("bob/conversation").save(ConversationSnapshot([], [])),
            alice.history("bob/conversation").delete(),
            reader.events.append("alice/chat", 2, delta("read-only")),
            reader.history("alice/conversation").delete(),
            alice.admin.stats(),
            reader.admin.stats(),
        ):
            with pytest.raises(PermissionDeniedError) as refused:
                await attempt
            assert refused.value.reason == "permission_denied"
        async with reader.events.appender() as appender:
            with pytest.raises(PermissionDeniedError):
                await appender.append("alice/chat", 3, delta("read-only"))
        async with alice.events.appender() as appender:
            with pytest.raises(PermissionDeniedError):
                await appender.append("bob/chat", 3, delta("intrusion"))
            # The stream goes on for the items the scope allows.
            assert await appender.append("alice/chat", 3, delta("mine")) is not None
        assert await bob.events.event_count("bob/chat") == 1
        assert await admin.events.event_count("bob/chat") == 1
        assert (await admin.admin.stats()).threads == 4

        # Each call runs with its own token's scope, however calls interleave.
        async def listed(client: TurnstoreClient) -> list[str]:
            return [t.thread_id async for t in client.admin.list_threads()]

        async def turn_found(client: TurnstoreClient) -> bool:
            return await client.events.get_turn("bob/chat", 1) is not None

        clients = [alice, admin, bob] * 10
        listings = await asyncio.gather(*(listed(c) for c in clients))
        assert (
            listings
            == [
                ["alice/chat", "alice/streamed"],
                ["alice/chat", "alice/streamed", "bob/chat", "bob/streamed"],
                ["bob/chat", "bob/streamed"],
            ]
            * 10
        )
        found = await asyncio.gather(*(turn_found(c) for c in clients))
        assert found == [False, True, True] * 10


async def test_revoking_one_session_survives_a_restart(
    tmp_path: Path, http: aiohttp.ClientSession, start_daemon: DaemonStarter
) -> None:
    daemon = start_daemon("lmdb", *access_args(tmp_path))
    try:
        base = http_base(daemon)
        first, second, third = [
            (await mint(http, base, ADMIN, {"thread_prefix": "alice/"}))["session"]
            for _ in range(3)
        ]
        # The page ends its own session (the cookie, or session=)...
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            browser.cookie_jar.update_cookies(
                {"turnstore_session": first}, response_url=yarl.URL(base)
            )
            assert (await browser.get(f"{base}/v1/threads")).status == 200
            ended = await browser.delete(f"{base}/v1/session")
            assert (await ended.json())["revoked"] is True
        # ... or the backend ends a user's session with its token.
        ended = await http.delete(
            f"{base}/v1/session", headers=bearer(ADMIN), data=json.dumps({"session": second})
        )
        assert (await ended.json())["revoked"] is True
        # Alice's token cannot end sessions it could not have minted.
        bobs = (await mint(http, base, BOB, None))["session"]
        ended = await http.delete(
            f"{base}/v1/session", headers=bearer(ALICE), data=json.dumps({"session": bobs})
        )
        assert (await ended.json())["revoked"] is False

        async def status(session: str) -> int:
            return (await http.get(f"{base}/v1/threads", params={"session": session})).status

        assert [await status(s) for s in (first, second, third, bobs)] == [401, 401, 200, 200]
        assert daemon.stop() == 0
        daemon.start()
        base = http_base_after_restart(daemon)
        assert [await status(s) for s in (first, second, third, bobs)] == [401, 401, 200, 200]
    finally:
        assert daemon.stop() == 0


def http_base_after_restart(daemon: Daemon) -> str:
    serving = [json.loads(line) for line in daemon.log_lines if '"serving"' in line]
    return str(serving[-1]["http"])


async def _ended_within(stream: Any, deadline: float) -> float:
    """Read the stream until its session_ended event; the time it came (monotonic)."""
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "the stream did not end after its session did"
        event = await stream.next(timeout=remaining)
        assert event is not None, "the stream closed without session_ended"
        if event.name == "session_ended":
            return time.monotonic()


async def test_an_open_stream_ends_within_one_heartbeat_of_its_session_expiring(
    tmp_path: Path, http: aiohttp.ClientSession, start_daemon: DaemonStarter
) -> None:
    heartbeat = 1.0
    daemon = start_daemon(
        "lmdb", *access_args(tmp_path, "--http-session-ttl", "5s", "--http-heartbeat", "1s")
    )
    try:
        base = http_base(daemon)
        minted = await mint(http, base, ADMIN, {"thread_prefix": "alice/"})
        url = f"{base}/v1/threads/alice%2Fchat/events?session={minted['session']}"
        stream = await open_stream(http, url)
        first = await stream.next()
        assert first is not None and first.name == "caught_up"
        # The stream keeps delivering while the session lives.
        async with TurnstoreClient(daemon.target, token=ADMIN) as admin:
            await admin.events.append("alice/chat", 1, delta("live"))
        event = await stream.next()
        assert event is not None and event.json()["delta"] == "live"
        expires_at = minted["expires_at"]
        ended = await _ended_within(stream, time.monotonic() + 30)
        # The session is no longer valid from expires_at (Unix seconds) on.
        lateness = (ended - time.monotonic()) + time.time() - expires_at
        assert lateness <= heartbeat, lateness
        assert await stream.next(timeout=5) is None
        # Its reconnect is refused: EventSource stops.
        assert (await http.get(url)).status == 401
    finally:
        assert daemon.stop() == 0


async def test_an_open_stream_ends_within_one_heartbeat_of_its_session_being_revoked(
    tmp_path: Path, http: aiohttp.ClientSession, start_daemon: DaemonStarter
) -> None:
    heartbeat = 1.0
    daemon = start_daemon("lmdb", *access_args(tmp_path, "--http-heartbeat", "1s"))
    try:
        base = http_base(daemon)
        kept, revoked = [(await mint(http, base, ADMIN, None))["session"] for _ in range(2)]
        streams = []
        for session in (kept, revoked):
            stream = await open_stream(http, f"{base}/v1/threads/t/events?session={session}")
            first = await stream.next()
            assert first is not None and first.name == "caught_up"
            streams.append(stream)
        ended = await http.delete(
            f"{base}/v1/session", headers=bearer(ADMIN), data=json.dumps({"session": revoked})
        )
        assert (await ended.json())["revoked"] is True
        revoked_at = time.monotonic()
        ended_at = await _ended_within(streams[1], revoked_at + 30)
        assert ended_at - revoked_at <= heartbeat, ended_at - revoked_at
        # The other session's stream goes on.
        async with TurnstoreClient(daemon.target, token=ADMIN) as admin:
            await admin.events.append("t", 1, delta("still here"))
        event = await streams[0].next()
        assert event is not None and event.json()["delta"] == "still here"
        streams[0].close()
    finally:
        assert daemon.stop() == 0


def test_scope_json_is_checked_strictly() -> None:
    assert parse_scope({}).full and not parse_scope({"read_only": True}).full
    tenant = parse_scope({"thread_prefix": "a/"})
    assert tenant.covers_thread("a/x") and not tenant.covers_thread("b/x")
    assert not tenant.covers_key("a/x")  # naming only threads reaches no key
    assert parse_scope({"thread_prefix": "a/", "key_prefix": ""}).covers_key("anything")
    listed = parse_scope({"threads": ["t1"], "keys": ["k1"]})
    assert listed.covers_thread("t1") and not listed.covers_thread("t10")
    assert listed.within(parse_scope({"thread_prefix": "t", "keys": ["k1", "k2"]}))
    assert not parse_scope({}).within(parse_scope({"read_only": True}))
    for bad in (
        None,
        {"threads": "t1"},
        {"threads": [""]},
        {"threads": [1]},
        {"read_only": "yes"},
        {"thread_prefix": None},
        {"keys": ["k"] * 1001},
        {"thread_prefix": "x" * 5000},
        {"extra": 1},
    ):
        with pytest.raises(ScopeError):
            parse_scope(bad)


def test_a_malformed_tokens_file_stops_the_daemon(
    tmp_path: Path, start_daemon: DaemonStarter
) -> None:
    for content, problem in (
        ('{"token": "a"}\n{"token": "a"}\n', "given twice"),
        ('{"token": "a", "scope": {"thread_prefix": 1}}\n', "scope.thread_prefix"),
        ("not json\n", "not JSON"),
        ("# nothing\n", "holds no token"),
    ):
        tokens = tmp_path / "tokens.jsonl"
        tokens.write_text(content)
        daemon = start_daemon("lmdb", "--auth-tokens-file", str(tokens), start=False)
        with pytest.raises(RuntimeError, match=problem):
            daemon.start()


def test_scoped_listings_page_exactly_the_covered_ids(tmp_path: Path) -> None:
    """Against the real engine: every scope's pages are the covered ids in order, no more."""
    rng = random.Random(18)
    alphabet = ["a", "b", "/", "-", ".", "\u00e9", "\U0001f642", "\x00"]
    ids = sorted({"".join(rng.choices(alphabet, k=rng.randint(1, 5))) for _ in range(300)})
    engine = LmdbEngine.open(EngineConfig(tmp_path / "data"))
    try:
        envelope = pb.EventEnvelope(event_id="e", type="t").SerializeToString()
        for thread_id in ids:
            engine.append(thread_id, 1, [NewEvent("e", envelope)]).result()
        assert [t.thread_id for t in engine.list_threads("", 1000)] == ids
        for _ in range(60):
            spec: dict[str, Any] = {}
            if rng.random() < 0.7:
                spec["thread_prefix"] = "".join(rng.choices(alphabet, k=rng.randint(1, 3)))
            if rng.random() < 0.6:
                spec["threads"] = [*rng.sample(ids, rng.randint(1, 8)), "absent\U0001f642"]
            spec = spec or {"threads": []}
            scope = parse_scope(spec)
            view = ScopedEngine(engine, scope)
            expected = [i for i in ids if scope.covers_thread(i)]
            for limit in (1, 3, 1000):
                paged: list[str] = []
                after = ""
                while True:
                    page = [t.thread_id for t in view.list_threads(after, limit)]
                    paged += page
                    if len(page) < limit:
                        break
                    after = page[-1]
                assert paged == expected, (spec, limit)
            start = rng.choice(ids)
            assert [t.thread_id for t in view.list_threads(start, 1000)] == [
                i for i in expected if i > start
            ]
    finally:
        engine.close()


async def test_a_revocation_holds_across_a_postgres_fleet_and_its_restarts(
    tmp_path: Path, start_daemon: DaemonStarter, http: aiohttp.ClientSession
) -> None:
    dsn = start_daemon.database()
    fleet = [start_daemon("postgres", *access_args(tmp_path), dsn=dsn) for _ in "ab"]
    try:
        minted_at, checked_at = http_base(fleet[0]), http_base(fleet[1])
        revoked, kept = [(await mint(http, minted_at, ADMIN, None))["session"] for _ in "ab"]

        async def status(base: str, session: str) -> int:
            return (await http.get(f"{base}/v1/threads", params={"session": session})).status

        assert [await status(checked_at, s) for s in (revoked, kept)] == [200, 200]
        ended = await http.delete(
            f"{minted_at}/v1/session",
            headers=bearer(ADMIN),
            data=json.dumps({"session": revoked}),
        )
        assert (await ended.json())["revoked"] is True
        assert await status(minted_at, revoked) == 401

        async def refused_there() -> bool:
            return await status(checked_at, revoked) == 401

        await eventually_async(refused_there, what="the other daemon to refuse the revoked session")
        assert await status(checked_at, kept) == 200
        for daemon in fleet:
            assert daemon.stop() == 0
            daemon.start()
        for daemon in fleet:
            base = http_base_after_restart(daemon)
            assert [await status(base, s) for s in (revoked, kept)] == [401, 200]
    finally:
        for daemon in fleet:
            assert daemon.stop() == 0
