"""turnstore.integrations.langgraph.TurnstoreSaver against real daemons.

LangGraph's official conformance suite (``langgraph-checkpoint-conformance``
from PyPI) runs against the saver on LMDB and once on PostgreSQL and must pass
every capability, base and extended; a real ``StateGraph`` with an interrupt
and a resume ends as it does with LangGraph's ``InMemorySaver``; two writers
continuing one thread cannot both succeed. The test installs LangGraph when
it is missing and fails (never skips) when it cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import operator
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest

from tests.support.daemon import Daemon
from tests.support.exclusive import one_at_a_time

REQUIREMENTS = [
    "langgraph>=1.2",
    "langgraph-checkpoint>=4.3",
    "langgraph-checkpoint-conformance>=0.0.2",
]


def _langgraph_importable() -> bool:
    try:
        importlib.import_module("langgraph.graph")
        importlib.import_module("langgraph.checkpoint.conformance")
    except ImportError:
        return False
    return True


def _require_langgraph() -> None:
    """Install LangGraph and its conformance suite when missing; fail when that fails."""
    if _langgraph_importable():
        return
    with one_at_a_time("pip"):  # every test process imports this module
        importlib.invalidate_caches()
        if _langgraph_importable():
            return
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", *REQUIREMENTS],
            capture_output=True,
            text=True,
            check=False,
        )
    assert result.returncode == 0, f"could not install {REQUIREMENTS}: {result.stderr[-2000:]}"
    importlib.invalidate_caches()


_require_langgraph()

from langchain_core.runnables import RunnableConfig  # noqa: E402
from langgraph.channels.delta import DeltaChannel  # noqa: E402
from langgraph.checkpoint.base import BaseCheckpointSaver  # noqa: E402
from langgraph.checkpoint.conformance import checkpointer_test, validate  # noqa: E402
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.graph import END, START, StateGraph  # noqa: E402
from langgraph.types import Command, interrupt  # noqa: E402

from turnstore import TurnstoreClient as AsyncTurnstoreClient  # noqa: E402
from turnstore.integrations.langgraph import CheckpointConflictError, TurnstoreSaver  # noqa: E402
from turnstore.sync import ClientClosedError, TurnstoreClient  # noqa: E402


async def _conformance(target: str, name: str) -> None:
    @checkpointer_test(name=name)
    async def factory() -> AsyncGenerator[BaseCheckpointSaver[Any], None]:
        async with TurnstoreSaver.from_target(target) as saver:
            yield saver

    report = await validate(factory)
    summary = {
        capability: (result.detected, result.passed, result.tests_passed, result.tests_failed)
        for capability, result in report.results.items()
    }
    print(f"conformance of {name}: {summary}")
    assert set(report.results) == {c.value for c in ALL_CAPABILITIES}
    failures = {
        capability: result.failures
        for capability, result in report.results.items()
        if not (result.detected and result.passed and result.tests_failed == 0)
    }
    assert failures == {}, failures
    assert all(result.tests_passed > 0 for result in report.results.values())


async def test_conformance_lmdb(daemon: Daemon) -> None:
    await _conformance(daemon.target, "TurnstoreSaver-lmdb")


async def test_conformance_postgres(postgres_daemon: Daemon) -> None:
    await _conformance(postgres_daemon.target, "TurnstoreSaver-postgres")


class Draft(TypedDict):
    """The state of the review graph: an append-only log and the reviewer's answer."""

    log: Annotated[list[str], operator.add]
    approved: bool


def _start() -> Draft:
    return {"log": ["start"], "approved": False}


def _review_graph() -> StateGraph[Draft]:
    def write(state: Draft) -> dict[str, Any]:
        return {"log": ["drafted"]}

    def review(state: Draft) -> dict[str, Any]:
        answer = interrupt({"question": "publish?", "log": state["log"]})
        return {"approved": bool(answer), "log": [f"reviewed:{answer}"]}

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


def _history(graph: Any, config: RunnableConfig) -> list[tuple[Any, ...]]:
    """What a user sees of a thread's history: values, next nodes, step and source."""
    return [
        (s.values, s.next, s.metadata.get("step"), s.metadata.get("source"), len(s.tasks))
        for s in graph.get_state_history(config)
    ]


def test_a_graph_with_an_interrupt_ends_as_with_the_in_memory_saver(daemon: Daemon) -> None:
    """Sync API: interrupt, resume from a second saver (another client), same state as InMemorySaver."""
    thread: RunnableConfig = {"configurable": {"thread_id": f"review-{uuid.uuid4()}"}}
    memory_graph = _review_graph().compile(checkpointer=InMemorySaver())
    with (
        TurnstoreSaver(target=daemon.target) as first,
        TurnstoreSaver(target=daemon.target) as second,
    ):
        graph = _review_graph().compile(checkpointer=first)
        paused = graph.invoke(_start(), thread)
        memory_paused = memory_graph.invoke(_start(), thread)
        assert paused["__interrupt__"][0].value == {
            "question": "publish?",
            "log": ["start", "drafted"],
        }
        assert paused["__interrupt__"][0].value == memory_paused["__interrupt__"][0].value
        assert graph.get_state(thread).next == ("review",)

        # Resumed by another saver (another connection, as after a restart).
        resumed_graph = _review_graph().compile(checkpointer=second)
        done = resumed_graph.invoke(Command(resume=True), thread)
        memory_done = memory_graph.invoke(Command(resume=True), thread)
        assert done == memory_done
        assert done["log"] == ["start", "drafted", "reviewed:True", "published"]
        assert _history(resumed_graph, thread) == _history(memory_graph, thread)
        assert resumed_graph.get_state(thread).values == memory_graph.get_state(thread).values
    # Closed with the `with`: a clear error, not a hang or a closed-loop RuntimeError.
    with pytest.raises(ClientClosedError):
        first.get_tuple(thread)
    with pytest.raises(ClientClosedError):
        asyncio.run(second.aget_tuple(thread))


@pytest.mark.parametrize("made", ["from_target", "sync_facade"])
async def test_the_async_api_runs_the_same_graph(daemon: Daemon, made: str) -> None:
    """ainvoke through an async client on this loop, or through a sync façade's loop thread."""
    thread: RunnableConfig = {"configurable": {"thread_id": f"review-async-{uuid.uuid4()}"}}
    memory_graph = _review_graph().compile(checkpointer=InMemorySaver())
    async with contextlib.AsyncExitStack() as stack:
        if made == "from_target":
            saver = await stack.enter_async_context(TurnstoreSaver.from_target(daemon.target))
        else:
            saver = stack.enter_context(TurnstoreSaver(target=daemon.target))
        graph = _review_graph().compile(checkpointer=saver)
        await graph.ainvoke(_start(), thread)
        await memory_graph.ainvoke(_start(), thread)
        done = await graph.ainvoke(Command(resume=False), thread)
        assert done == await memory_graph.ainvoke(Command(resume=False), thread)
        assert done["log"][-1] == "dropped"
        ours = [s.values async for s in graph.aget_state_history(thread)]
        theirs = [s.values async for s in memory_graph.aget_state_history(thread)]
        assert ours == theirs and len(ours) == 5


def _checkpoint(checkpoint_id: str | None = None, **values: Any) -> Any:
    from langgraph.checkpoint.base.id import uuid6

    return {
        "v": 1,
        "id": checkpoint_id or str(uuid6(clock_seq=-1)),
        "ts": "2026-01-01T00:00:00+00:00",
        "channel_values": values,
        "channel_versions": {k: 1 for k in values},
        "versions_seen": {},
        "pending_sends": [],
        "updated_channels": None,
    }


def _race(writers: list[tuple[str, TurnstoreSaver, Any]]) -> dict[str, Any]:
    """Each writer puts a child of its ``parent`` tuple at once; what each got back."""
    start = threading.Barrier(len(writers))
    outcomes: dict[str, Any] = {}

    def put(name: str, saver: TurnstoreSaver, parent: Any) -> None:
        start.wait()
        try:
            outcomes[name] = saver.put(
                parent.config, _checkpoint(x=name), {"source": "loop", "step": 0}, {"x": 2}
            )
        except CheckpointConflictError as error:
            outcomes[name] = error

    runs = [threading.Thread(target=put, args=writer) for writer in writers]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=30)
    return outcomes


def test_two_writers_continuing_one_thread_cannot_both_succeed(daemon: Daemon) -> None:
    """Both read the same latest checkpoint and put a child of it at once: one is refused."""
    thread_id = f"race-{uuid.uuid4()}"
    config: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    with TurnstoreSaver(target=daemon.target) as a, TurnstoreSaver(target=daemon.target) as b:
        root = a.put(config, _checkpoint(x="root"), {"source": "input", "step": -1}, {"x": 1})
        for _attempt in range(5):
            latest_a, latest_b = a.get_tuple(config), b.get_tuple(config)
            assert latest_a is not None and latest_b is not None
            assert latest_a.config == latest_b.config
            outcomes = _race([("a", a, latest_a), ("b", b, latest_b)])
            refused = [n for n, o in outcomes.items() if isinstance(o, CheckpointConflictError)]
            assert len(outcomes) == 2 and len(refused) == 1, outcomes
        # The thread is one line: every checkpoint's parent is the one before it.
        history = list(a.list(config))
        assert len(history) == 6
        for child, parent in itertools.pairwise(history):
            assert child.parent_config is not None
            assert (
                child.parent_config["configurable"]["checkpoint_id"]
                == parent.config["configurable"]["checkpoint_id"]
            )
        assert history[-1].config == root


def test_a_stale_run_cannot_overwrite_newer_state(daemon: Daemon) -> None:
    """A cancelled run that wakes up and puts from its old checkpoint is refused (unless forks are allowed)."""
    thread_id = f"stale-{uuid.uuid4()}"
    config: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    with TurnstoreSaver(target=daemon.target) as saver:
        old = saver.put(config, _checkpoint(x="old"), {"source": "input", "step": -1}, {"x": 1})
        newer = saver.put(old, _checkpoint(x="newer"), {"source": "loop", "step": 0}, {"x": 2})
        with pytest.raises(CheckpointConflictError, match="moved on"):
            saver.put(old, _checkpoint(x="stale"), {"source": "loop", "step": 0}, {"x": 2})
        latest = saver.get_tuple(config)
        assert latest is not None and latest.config == newer
        assert latest.checkpoint["channel_values"] == {"x": "newer"}
        # A retried put of the head itself is not a conflict.
        head = _checkpoint(latest.checkpoint["id"], x="newer")
        assert saver.put(old, head, {"source": "loop", "step": 0}, {"x": 2}) == newer
    with TurnstoreSaver(target=daemon.target, allow_forks=True) as forking:
        fork = forking.put(old, _checkpoint(x="fork"), {"source": "fork", "step": 0}, {"x": 2})
        latest = forking.get_tuple(config)
        assert latest is not None and latest.config == fork


def _keys_under(daemon: Daemon, prefix: str) -> list[str]:
    with TurnstoreClient(daemon.target) as client:
        return [info.key for info in client.list_keys(prefix=prefix)]


def test_keep_last_bounds_a_thread_and_delete_thread_leaves_nothing(daemon: Daemon) -> None:
    thread_id = f"bounded-{uuid.uuid4()}"
    run_id = str(uuid.uuid4())
    config: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    with TurnstoreSaver(target=daemon.target, keep_last=3) as saver:
        for step in range(10):
            config = saver.put(
                config,
                _checkpoint(x=step),
                {"source": "loop", "step": step, "run_id": run_id},
                {"x": step + 1},
            )
            saver.put_writes(config, [("x", step)], f"task-{step}")
        history = list(saver.list({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}))
        assert [t.checkpoint["channel_values"]["x"] for t in history] == [9, 8, 7]
        keys = _keys_under(daemon, saver._layout.thread(thread_id))
        # Three checkpoints, their writes, the head and the run marker: nothing else kept.
        assert len(keys) == 3 + 3 + 1 + 1, keys
        assert len(_keys_under(daemon, saver._layout.run(run_id))) == 3

        with TurnstoreClient(daemon.target) as client:
            assert client.events.event_count("langgraph/" + thread_id) == 20
            saver.delete_thread(thread_id)
            assert client.events.event_count("langgraph/" + thread_id) == 0
        assert saver.get_tuple(config) is None
        assert _keys_under(daemon, saver._layout.thread(thread_id)) == []
        assert _keys_under(daemon, saver._layout.run(run_id)) == []


def test_a_follower_sees_every_checkpoint_and_write(daemon: Daemon) -> None:
    thread: RunnableConfig = {"configurable": {"thread_id": f"follow-{uuid.uuid4()}"}}
    with TurnstoreSaver(target=daemon.target) as saver, TurnstoreClient(daemon.target) as client:
        graph = _review_graph().compile(checkpointer=saver)
        graph.invoke(_start(), thread)
        graph.invoke(Command(resume=True), thread)
        # Twice: a retried put (same checkpoint) appends no second event.
        latest = saver.get_tuple(thread)
        assert latest is not None and latest.parent_config is not None
        saver.put(latest.parent_config, latest.checkpoint, latest.metadata, {})
        events = [
            e.event
            for e in client.events.get_events("langgraph/" + thread["configurable"]["thread_id"])
        ]
        checkpoint_ids = [e["checkpoint_id"] for e in events if e["type"] == "langgraph.checkpoint"]
        history = [
            s.config["configurable"]["checkpoint_id"] for s in graph.get_state_history(thread)
        ]
        assert sorted(checkpoint_ids) == sorted(history)
        writes = [e for e in events if e["type"] == "langgraph.writes"]
        assert any(
            w["channel"] == "log" and w["value"] == ["published"]
            for e in writes
            for w in e["writes"]
        )
        assert any(w["channel"] == "__interrupt__" for e in writes for w in e["writes"])


def _concat(state: list[str], writes: Sequence[list[str]]) -> list[str]:
    return [*state, *(item for write in writes for item in write)]


class Counted(TypedDict):
    """A loop's state: a DeltaChannel log (stored as deltas, snapshot every 3 updates)."""

    log: Annotated[list[str], DeltaChannel(_concat, snapshot_frequency=3)]
    count: int


def _loop_graph() -> StateGraph[Counted]:
    def step(state: Counted) -> dict[str, Any]:
        return {"log": [f"s{state['count']}"], "count": state["count"] + 1}

    graph = StateGraph(Counted)
    graph.add_node("step", step)
    graph.add_edge(START, "step")
    graph.add_conditional_edges("step", lambda s: END if s["count"] % 7 == 0 else "step")
    return graph


def test_delta_channels_survive_prune_and_keep_last(daemon: Daemon) -> None:
    """A DeltaChannel is rebuilt from ancestors' writes: pruning keeps exactly those."""
    memory = _loop_graph().compile(checkpointer=InMemorySaver())
    thread: RunnableConfig = {"configurable": {"thread_id": f"delta-{uuid.uuid4()}"}}
    start: Counted = {"log": ["in"], "count": 1}
    expected = memory.invoke(start, thread)
    assert expected["log"] == ["in", "s1", "s2", "s3", "s4", "s5", "s6"]
    with TurnstoreSaver(target=daemon.target) as saver:
        graph = _loop_graph().compile(checkpointer=saver)
        assert graph.invoke(start, thread) == expected
        before = len(list(saver.list(thread)))
        saver.prune([thread["configurable"]["thread_id"]], strategy="keep_latest")
        after = len(list(saver.list(thread)))
        # Something was pruned, but not the ancestors the log is rebuilt from.
        assert 1 < after < before
        assert graph.get_state(thread).values == memory.get_state(thread).values
        # The thread goes on from there as the in-memory one does.
        assert graph.invoke({"log": ["again"], "count": 7}, thread) == memory.invoke(
            {"log": ["again"], "count": 7}, thread
        )
    bounded_thread: RunnableConfig = {"configurable": {"thread_id": f"delta-kept-{uuid.uuid4()}"}}
    with TurnstoreSaver(target=daemon.target, keep_last=2) as bounded:
        graph = _loop_graph().compile(checkpointer=bounded)
        assert graph.invoke(start, bounded_thread) == expected
        assert graph.get_state(bounded_thread).values == expected
        assert len(list(bounded.list(bounded_thread))) < before


EXAMPLE = Path(__file__).parent.parent / "examples" / "langgraph_follow.py"


def test_the_follow_example_shows_every_checkpoint_live(daemon: Daemon) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), daemon.target],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "done: ['start', 'drafted', 'reviewed:True', 'published']" in lines
    assert "followed 5 checkpoints live" in lines
    assert sum(line.startswith("checkpoint step=") for line in lines) == 5
    assert "  writes log = ['published']" in lines


class Fanned(TypedDict):
    """Four parallel branches append to one reducer channel."""

    log: Annotated[list[str], operator.add]


def _fan_graph() -> StateGraph[Fanned]:
    graph = StateGraph(Fanned)
    for name in ("a", "b", "c", "d"):
        graph.add_node(name, lambda state, name=name: {"log": [name]})
        graph.add_edge(START, name)
    graph.add_node("join", lambda state: {"log": ["joined"]})
    graph.add_edge(["a", "b", "c", "d"], "join")
    graph.add_edge("join", END)
    return graph


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
async def test_parallel_tasks_and_each_durability_match_the_in_memory_saver(
    daemon: Daemon, durability: Any
) -> None:
    """Parallel tasks' writes to one checkpoint all land; every durability mode works."""
    thread: RunnableConfig = {"configurable": {"thread_id": f"fan-{uuid.uuid4()}"}}
    memory = _fan_graph().compile(checkpointer=InMemorySaver())
    async with TurnstoreSaver.from_target(daemon.target) as saver:
        graph = _fan_graph().compile(checkpointer=saver)
        for _run in range(2):
            ours = await graph.ainvoke({"log": ["in"]}, thread, durability=durability)
            theirs = await memory.ainvoke({"log": ["in"]}, thread, durability=durability)
            assert sorted(ours["log"]) == sorted(theirs["log"])
        history = [s async for s in graph.aget_state_history(thread)]
        expected = [s async for s in memory.aget_state_history(thread)]
        assert [(s.metadata or {}).get("step") for s in history] == [
            (s.metadata or {}).get("step") for s in expected
        ]
        assert [sorted(s.values.get("log", [])) for s in history] == [
            sorted(s.values.get("log", [])) for s in expected
        ]


def test_time_travel_and_update_state_branch_as_with_the_in_memory_saver(daemon: Daemon) -> None:
    """Branches the user asks for (marked "fork"/"update" by LangGraph) are not stale runs."""
    thread: RunnableConfig = {"configurable": {"thread_id": f"travel-{uuid.uuid4()}"}}
    memory = _review_graph().compile(checkpointer=InMemorySaver())
    with TurnstoreSaver(target=daemon.target) as saver:
        graph = _review_graph().compile(checkpointer=saver)
        for g in (graph, memory):
            g.invoke(_start(), thread)
            g.invoke(Command(resume=True), thread)

        def at_review(g: Any) -> RunnableConfig:
            found: RunnableConfig = next(
                s.config for s in g.get_state_history(thread) if s.next == ("review",)
            )
            return found

        # Time travel: resume the old interrupt differently. LangGraph does not
        # mark this branch, so it is refused as a stale run unless asked for.
        with pytest.raises(CheckpointConflictError, match="turnstore_fork"):
            graph.invoke(Command(resume=False), at_review(graph))
        assert graph.get_state(thread).values["log"][-1] == "published"
        branch = at_review(graph)
        branch["configurable"]["turnstore_fork"] = True
        ours = graph.invoke(Command(resume=False), branch)
        branch = at_review(memory)
        branch["configurable"]["turnstore_fork"] = True
        theirs = memory.invoke(Command(resume=False), branch)
        assert ours == theirs
        assert graph.get_state(thread).values == memory.get_state(thread).values
        # update_state on an older checkpoint: another branch, now the latest.
        graph.update_state(at_review(graph), {"log": ["edited"]})
        memory.update_state(at_review(memory), {"log": ["edited"]})
        assert graph.get_state(thread).values == memory.get_state(thread).values
        assert _history(graph, thread) == _history(memory, thread)


def test_one_saver_serves_many_threads_at_once(daemon: Daemon) -> None:
    """No instance lock: eight OS threads run graphs through one saver concurrently."""
    with TurnstoreSaver(target=daemon.target) as saver:
        graph = _review_graph().compile(checkpointer=saver)
        start = threading.Barrier(8)

        def run(worker: int) -> list[str]:
            config: RunnableConfig = {"configurable": {"thread_id": f"pool-{uuid.uuid4()}"}}
            start.wait()
            graph.invoke(_start(), config)
            done = graph.invoke(Command(resume=worker % 2 == 0), config)
            log: list[str] = done["log"]
            return log

        with ThreadPoolExecutor(8) as pool:
            logs = list(pool.map(run, range(8)))
        assert logs == [
            ["start", "drafted", f"reviewed:{w % 2 == 0}", "published" if w % 2 == 0 else "dropped"]
            for w in range(8)
        ]


def test_a_large_checkpoint_is_stored_in_one_batch(daemon: Daemon) -> None:
    """A long conversation's checkpoint (here 2 MB of messages) goes through put's atomic batch."""
    thread_id = f"large-{uuid.uuid4()}"
    config: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    messages = [f"message {i} " + "x" * 2000 for i in range(1000)]
    with TurnstoreSaver(target=daemon.target) as saver:
        stored = saver.put(
            config, _checkpoint(messages=messages), {"source": "loop", "step": 0}, {}
        )
        saver.put_writes(stored, [("messages", messages[:300])], "task")
        loaded = saver.get_tuple(config)
        assert loaded is not None
        assert loaded.checkpoint["channel_values"]["messages"] == messages
        assert loaded.pending_writes == [("task", "messages", messages[:300])]


def test_neither_the_core_client_nor_the_sync_facade_needs_langgraph() -> None:
    """Without LangGraph the client imports; the adapter says which extra to install."""
    code = (
        "import sys\n"
        "for name in ('langgraph', 'langchain_core'):\n"
        "    sys.modules[name] = None  # as if not installed\n"
        "import turnstore, turnstore.client, turnstore.sync, turnstore.integrations\n"
        "try:\n"
        "    import turnstore.integrations.langgraph\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'turnstore[langgraph]'" in result.stdout


DOC = Path(__file__).parent.parent / "docs" / "langgraph.md"


def test_the_docs_whole_program_runs(daemon: Daemon) -> None:
    """docs/langgraph.md's first Python block is a whole program: it runs as printed."""
    text = DOC.read_text(encoding="utf-8")
    program = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert "127.0.0.1:7070" in program
    result = subprocess.run(
        [sys.executable, "-c", program.replace("127.0.0.1:7070", daemon.target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'log': ['start', 'drafted', 'reviewed:yes']}"


def test_deeply_nested_namespaces_fit_the_key_limit(daemon: Daemon) -> None:
    """A subgraph six levels down: its namespace is hashed in keys and named in values."""
    thread_id, copy_id, run_id = (str(uuid.uuid4()) for _ in range(3))
    ns = "|".join(f"level{depth}:{uuid.uuid4()}" for depth in range(6))
    config: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns}}
    with TurnstoreSaver(target=daemon.target) as saver:
        for step in range(3):
            config = saver.put(
                config, _checkpoint(x=step), {"source": "loop", "step": step, "run_id": run_id}, {}
            )
            saver.put_writes(config, [("x", step)], "task")
        keys = _keys_under(daemon, saver._layout.thread(thread_id))
        keys += _keys_under(daemon, saver._layout.run(run_id))
        assert max(len(k.encode()) for k in keys) <= 256, keys
        everywhere = list(saver.list({"configurable": {"thread_id": thread_id}}))
        assert [t.config["configurable"]["checkpoint_ns"] for t in everywhere] == [ns] * 3
        latest = saver.get_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ns}})
        assert latest is not None and latest.pending_writes == [("task", "x", 2)]

        saver.copy_thread(thread_id, copy_id)
        saver.prune([thread_id], strategy="keep_latest")
        assert len(list(saver.list({"configurable": {"thread_id": thread_id}}))) == 1
        assert len(list(saver.list({"configurable": {"thread_id": copy_id}}))) == 3
        saver.delete_for_runs([run_id])
        assert list(saver.list({"configurable": {"thread_id": thread_id}})) == []
        assert list(saver.list({"configurable": {"thread_id": copy_id}})) == []
        assert _keys_under(daemon, saver._layout.run(run_id)) == []
        # Nothing of either thread is left: checkpoints, writes, heads, run markers.
        assert _keys_under(daemon, saver._layout.thread(thread_id)) == []
        assert _keys_under(daemon, saver._layout.thread(copy_id)) == []


def test_a_saver_on_an_async_client_refuses_what_would_hang(daemon: Daemon) -> None:
    """Sync calls on the client's own loop, or after that loop ended: an error, never a hang."""
    config: RunnableConfig = {
        "configurable": {"thread_id": f"loop-{uuid.uuid4()}", "checkpoint_ns": ""}
    }
    savers: list[TurnstoreSaver] = []

    async def inside() -> None:
        async with AsyncTurnstoreClient(daemon.target) as client:
            saver = TurnstoreSaver(client=client)
            savers.append(saver)
            with pytest.raises(RuntimeError, match="async methods"):
                saver.get_tuple(config)
            # From another thread the sync methods work, on this loop.
            assert await asyncio.to_thread(saver.get_tuple, config) is None
            assert await saver.aget_tuple(config) is None

    asyncio.run(inside())
    with pytest.raises(RuntimeError, match="not running"):
        savers[0].get_tuple(config)
    with pytest.raises(ValueError, match="running event loop"):
        TurnstoreSaver(client=savers[0]._async_client)
