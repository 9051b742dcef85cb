"""turnstore.sync.TurnstoreClient: the blocking façade, against a real daemon."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.daemon import Daemon
from turnstore import AgentEventEnvelope, ConversationSnapshot, InvalidArgumentError, StoredEvent
from turnstore import TurnstoreClient as AsyncTurnstoreClient
from turnstore.errors import VersionConflictError
from turnstore.history import BatchDeletePrefix, BatchSave
from turnstore.sync import ClientClosedError, TurnstoreClient


def _event(text: str) -> AgentEventEnvelope:
    return AgentEventEnvelope.new({"type": "text_delta", "text": text})


def _facade_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "turnstore-sync"]


def test_blocking_calls_round_trip(daemon: Daemon) -> None:
    thread = f"sync-{uuid.uuid4()}"
    key = f"sync-key-{uuid.uuid4()}"
    with TurnstoreClient(daemon.target) as client:
        assert client.events.append(thread, 1, _event("a")) == 0
        assert client.events.append_many(thread, 1, [_event("b"), _event("c")]) == [1, 2]
        client.events.finish_turn(thread, 1)
        assert [e.event["text"] for e in client.events.get_events(thread)] == ["a", "b", "c"]
        turn = client.events.get_turn(thread, 1)
        assert turn is not None and turn.finished
        stored = list(client.events.read_events(thread, 1))
        assert [e.position for e in stored] == [1, 2]

        history = client.history(key)
        assert history.load() is None
        snapshot = ConversationSnapshot([{"role": "user", "content": "hi"}], [False])
        assert history.save_versioned(snapshot, expected_version=0) == 1
        loaded = history.load_versioned()
        assert loaded is not None and loaded.version == 1
        with pytest.raises(VersionConflictError):
            history.save_versioned(snapshot, expected_version=0)
        assert any(info.key == key for info in client.list_keys())
        assert client.stats().events >= 3

        # The byte payloads, ranged listings and batches of issue 21, blocking too.
        blobs = client.history(f"{key}/blob")
        assert blobs.save_bytes(b"\x00\xff", "application/octet-stream") == 1
        blob = blobs.load_bytes()
        assert blob is not None and (blob.data, blob.content_type) == (
            b"\x00\xff",
            "application/octet-stream",
        )
        client.batch(
            [
                BatchSave(f"{key}/a", b"1", "text/plain"),
                BatchSave(f"{key}/b", b"2", "text/plain"),
            ]
        )
        newest = [i.key for i in client.list_keys(prefix=f"{key}/", newest_first=True, limit=2)]
        assert newest == [f"{key}/blob", f"{key}/b"]
        client.batch([BatchDeletePrefix(f"{key}/")])
        assert list(client.list_keys(prefix=f"{key}/")) == []


def test_usable_from_many_threads_at_once(daemon: Daemon) -> None:
    """Eight threads share one façade: every write lands once, every CAS winner is unique."""
    thread = f"sync-many-{uuid.uuid4()}"
    key = f"sync-many-{uuid.uuid4()}"
    with TurnstoreClient(daemon.target) as client:
        history = client.history(key)
        start = threading.Barrier(8)

        def work(worker: int) -> tuple[list[int], bool]:
            start.wait()
            positions = [
                client.events.append(thread, worker + 1, _event(f"{worker}-{i}")) for i in range(25)
            ]
            try:
                history.save_versioned(ConversationSnapshot([], []), expected_version=0)
                won = True
            except VersionConflictError:
                won = False
            return positions, won

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(8)))
        positions = sorted(p for worker_positions, _ in results for p in worker_positions)
        assert positions == list(range(200))
        assert sum(won for _, won in results) == 1
        assert client.events.event_count(thread) == 200


def test_closed_client_raises_a_clear_error(daemon: Daemon) -> None:
    before = len(_facade_threads())
    client = TurnstoreClient(daemon.target)
    assert len(_facade_threads()) == before + 1
    client.events.event_count(f"sync-closed-{uuid.uuid4()}")
    history = client.history("sync-closed")
    client.close()
    assert client.closed
    # The loop thread is gone, not left behind.
    assert len(_facade_threads()) == before
    with pytest.raises(ClientClosedError, match="closed"):
        client.events.event_count("x")
    with pytest.raises(ClientClosedError):
        history.load()
    with pytest.raises(ClientClosedError):
        list(client.list_keys())
    client.close()  # idempotent


def test_call_from_the_loop_thread_is_refused(daemon: Daemon) -> None:
    with TurnstoreClient(daemon.target) as client:

        async def reenter(_: AsyncTurnstoreClient) -> int:
            return client.events.event_count("x")

        with pytest.raises(RuntimeError, match="own loop thread"):
            client.call(reenter)
        # The façade still works afterwards.
        assert client.events.event_count(f"sync-{uuid.uuid4()}") == 0


def test_invalid_target_leaves_no_thread(daemon: Daemon) -> None:
    before = len(_facade_threads())
    with pytest.raises(InvalidArgumentError):
        TurnstoreClient("example.com:7070")
    assert len(_facade_threads()) == before


def test_a_following_replay_iterates_from_another_thread(daemon: Daemon) -> None:
    thread = f"sync-follow-{uuid.uuid4()}"
    with TurnstoreClient(daemon.target) as client, TurnstoreClient(daemon.target) as writer:
        writer.events.append(thread, 1, _event("first"))
        seen: list[str] = []
        replay = client.events.replay(thread, follow=True, until_turn_finished=1)

        def follow() -> None:
            for item in replay:
                if isinstance(item, StoredEvent):
                    seen.append(item.envelope.event["text"])

        follower = threading.Thread(target=follow)
        follower.start()
        writer.events.append(thread, 1, _event("second"))
        writer.events.finish_turn(thread, 1)
        follower.join(timeout=30)
        assert not follower.is_alive()
        assert seen == ["first", "second"]

        # Leaving a following replay early cancels it (no thread left waiting).
        endless = client.events.replay(thread, follow=True)
        assert isinstance(next(endless), StoredEvent)
        endless.close()


def test_the_facade_names_and_its_one_closing_verb() -> None:
    import turnstore.sync

    assert sorted(turnstore.sync.__all__) == [
        "ClientClosedError",
        "SyncEventStore",
        "SyncHistoryStore",
        "TurnstoreClient",
    ]
    # Not async, so close() (as a file's), and no aclose to confuse it with the async client.
    assert callable(TurnstoreClient.close)
    assert not hasattr(TurnstoreClient, "aclose")
