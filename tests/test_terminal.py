"""The operator's terminal and files: what ``turnstore`` prints and what export writes.

Anything the command line prints that came from storage (thread ids, event
types, conversation keys, event bodies) reaches the terminal with its control
characters escaped, in text and in JSON output alike: an OSC 52 sequence in a
thread id must not write the clipboard, a line-erasing code must not hide a
line. ``export -o`` writes through a temporary file that a link planted
beside the output cannot redirect. Every command runs as a ``python -m
turnstore`` subprocess against a real daemon.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.support.daemon import Daemon
from tests.test_cli import COMMAND_TIMEOUT, clean_env, json_lines, run
from turnstore import AgentEventEnvelope, ConversationSnapshot, TurnstoreClient
from turnstore.cli.admin import _create_partial
from turnstore.v1 import turnstore_pb2 as pb
from turnstore.v1 import turnstore_pb2_grpc as pb_grpc

# OSC 52: "write SGVsbG8= (base64) to the clipboard", ended by BEL.
OSC52 = "\x1b]52;c;SGVsbG8=\x07"
# Erase the line, go back to its start: what follows hides what came before.
ERASE_LINE = "\x1b[2K\r"
THREAD_OSC52 = f"osc52/{OSC52}thread"
THREAD_ERASE = f"hidden{ERASE_LINE}innocent"
EVENT_TYPE = f"tool_call{ERASE_LINE}"
# C1 CSI, DEL and a right-to-left override: orjson writes these unescaped.
BODY_TEXT = f"a{OSC52}b\x9b2Kc\x7fd\u202eevil\u2066e\u2028f"
KEY = f"chat/{OSC52}{ERASE_LINE}key\u202e"

# What a terminal acts on instead of showing; a line's own "\n" is allowed.
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def assert_terminal_safe(text: str) -> None:
    found = UNSAFE.search(text)
    assert found is None, f"{found.group()!r} printed raw in {text!r}"


def cli(daemon: Daemon, *args: str) -> str:
    """Run ``turnstore ARGS --target daemon``; its stdout, checked to be terminal-safe."""
    done = run(*args, "--target", daemon.target)
    assert done.returncode == 0, done.stderr
    assert_terminal_safe(done.stdout)
    assert_terminal_safe(done.stderr)
    return done.stdout


async def fill(daemon: Daemon) -> None:
    async with TurnstoreClient(daemon.target) as client:
        for thread in (THREAD_OSC52, THREAD_ERASE):
            event = AgentEventEnvelope.new({"type": EVENT_TYPE, "text": BODY_TEXT})
            await client.events.append(thread, 1, event)
            await client.events.finish_turn(thread, 1)
        await client.history(KEY).save(
            ConversationSnapshot([{"role": "user", "text": BODY_TEXT}], [False])
        )


@pytest.mark.parametrize("backend", ["lmdb", "postgres"])
async def test_listings_and_events_show_control_characters_escaped(
    start_daemon: Callable[..., Daemon], backend: str
) -> None:
    daemon = start_daemon(backend)
    await fill(daemon)

    # Text: the escapes are shown, readable and unambiguous.
    threads = cli(daemon, "threads", "--format", "text")
    assert "osc52/\\x1b]52;c;SGVsbG8=\\x07thread  1 events" in threads
    assert "hidden\\x1b[2K\\rinnocent  1 events" in threads
    for thread in (THREAD_OSC52, THREAD_ERASE):
        turns = cli(daemon, "turns", thread, "--events", "--format", "text")
        assert "  tool_call\\x1b[2K\\r {" in turns
        assert "\\u001b]52;c;SGVsbG8=\\u0007b\\u009b2Kc\\u007fd\\u202eevil\\u2066e\\u2028f" in turns
        tail = cli(daemon, "tail", thread, "--format", "text")
        assert "turn 1 tool_call\\x1b[2K\\r {" in tail
        assert "\\u009b2Kc\\u007fd\\u202eevil" in tail
    conversations = cli(daemon, "conversations", "--format", "text")
    assert "chat/\\x1b]52;c;SGVsbG8=\\x07\\x1b[2K\\rkey\\u202e  version 1" in conversations
    loaded = cli(daemon, "history", KEY, "load", "--format", "text")
    assert "\\u009b2Kc" in loaded

    # JSON: still the exact values once parsed, and nothing raw on the way.
    listed = json_lines(cli(daemon, "threads", "--format", "json"))
    assert {THREAD_OSC52, THREAD_ERASE} <= {line["thread_id"] for line in listed}
    for thread in (THREAD_OSC52, THREAD_ERASE):
        (turn,) = json_lines(cli(daemon, "turns", thread, "--events", "--format", "json"))
        assert turn["events"][0]["type"] == EVENT_TYPE
        assert turn["events"][0]["text"] == BODY_TEXT
        events = [
            line
            for line in json_lines(cli(daemon, "tail", thread, "--format", "json"))
            if "marker" not in line
        ]
        assert [(e["type"], e["text"]) for e in events] == [(EVENT_TYPE, BODY_TEXT)]
    (key,) = json_lines(cli(daemon, "conversations", "--format", "json"))
    assert key["key"] == KEY
    (snapshot,) = json_lines(cli(daemon, "history", KEY, "load", "--format", "json"))
    assert snapshot["key"] == KEY
    assert snapshot["snapshot"]["messages"][0]["text"] == BODY_TEXT


def test_error_messages_echoing_ids_are_escaped(daemon: Daemon) -> None:
    """A guard: messages naming an id (here through its repr) show it escaped."""
    key = f"missing/{OSC52}{ERASE_LINE}"
    done = run("history", key, "load", "--target", daemon.target)
    assert done.returncode == 1
    assert "\\x1b]52;c;SGVsbG8=\\x07" in done.stderr
    assert_terminal_safe(done.stderr)


# -- export -o -------------------------------------------------------------

# Plants a link where the export's temporary file used to go (".NAME.partial-
# PID", with this process's PID, which an attacker on the host reads from
# /proc), then runs the command line in the same process.
PLANT_AND_RUN = (
    "import os, sys\n"
    "os.symlink(sys.argv[1], os.path.join(sys.argv[2], '.out.jsonl.partial-%d' % os.getpid()))\n"
    "from turnstore.cli.main import main\n"
    "sys.exit(main(sys.argv[3:]))\n"
)


def python(*args: str, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` (under ``umask`` when given) with stdout and stderr piped."""

    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=COMMAND_TIMEOUT,
        preexec_fn=set_umask,
    )


async def exported_thread(daemon: Daemon) -> str:
    thread = "export/planted-link"
    async with TurnstoreClient(daemon.target) as client:
        await client.events.append(thread, 1, AgentEventEnvelope.new({"type": "x", "n": 1}))
    return thread


def export_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_export_is_not_redirected_by_a_link_planted_at_its_temporary_name(
    daemon: Daemon, tmp_path: Path
) -> None:
    thread = await exported_thread(daemon)
    shared = tmp_path / "shared"
    shared.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("the operator's other file\n")
    output = shared / "out.jsonl"
    done = python(
        "-c",
        PLANT_AND_RUN,
        str(victim),
        str(shared),
        "export",
        "-o",
        str(output),
        "--target",
        daemon.target,
    )
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "the operator's other file\n"
    assert not output.is_symlink() and output.is_file()
    assert any(line.get("thread_id") == thread for line in export_lines(output))
    # Nothing of the export is left beside it but the planted link itself.
    left = sorted(p.name for p in shared.iterdir())
    assert [name for name in left if not (shared / name).is_symlink()] == ["out.jsonl"]


async def test_export_replaces_a_link_at_the_output_and_gets_the_umask_mode(
    daemon: Daemon, tmp_path: Path
) -> None:
    await exported_thread(daemon)
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    output = tmp_path / "out.jsonl"
    output.symlink_to(victim)
    done = python(
        "-m", "turnstore", "export", "-o", str(output), "--target", daemon.target, umask=0o027
    )
    assert done.returncode == 0, done.stderr
    assert victim.read_text() == "keep me\n"
    assert not output.is_symlink()
    assert stat.S_IMODE(output.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "victim"]


async def test_export_into_a_missing_directory_names_it(daemon: Daemon, tmp_path: Path) -> None:
    output = tmp_path / "missing" / "out.jsonl"
    done = run("export", "-o", str(output), "--target", daemon.target)
    assert done.returncode == 1
    assert f"the directory {str(output.parent)!r} does not exist" in done.stderr
    assert "partial" not in done.stderr
    assert not output.parent.exists()


def test_a_failed_export_leaves_the_old_output_and_no_temporary_file(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    output.write_text("the previous export\n")
    done = run("export", "-o", str(output), "--target", f"unix:{tmp_path / 'no-daemon.sock'}")
    assert done.returncode == 1
    assert output.read_text() == "the previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_the_temporary_file_is_private_and_unpredictable(tmp_path: Path) -> None:
    """Its name is random, new each time, and only its owner may open it."""
    output = tmp_path / "out.jsonl"
    names = set()
    for _ in range(2):
        descriptor, partial = _create_partial(output)
        os.close(descriptor)
        name = Path(partial).name
        assert Path(partial).parent == tmp_path
        assert name.startswith(".out.jsonl.") and name.endswith(".partial")
        assert stat.S_IMODE(os.lstat(partial).st_mode) == 0o600
        names.add(name)
    assert len(names) == 2


async def test_snapshot_content_types_are_shown_escaped(daemon: Daemon) -> None:
    """A snapshot's content type is any writer's text: raw gRPC here, as any client could send.

    (Events are stored as ``application/json`` only; the daemon refuses others.)
    """
    key = "terminal/content-type-key"
    content_type = f"text/plain{OSC52}{ERASE_LINE}\u202e"
    async with grpc.aio.insecure_channel(daemon.target) as channel:
        await pb_grpc.HistoryStoreServiceStub(channel).Save(
            pb.SaveRequest(key=key, data=b"plain text", content_type=content_type)
        )
    versions = cli(daemon, "history", key, "versions", "--format", "text")
    assert "text/plain\\x1b]52;c;SGVsbG8=\\x07\\x1b[2K\\r\\u202e" in versions
    (version,) = json_lines(cli(daemon, "history", key, "versions", "--format", "json"))
    assert version["content_type"] == content_type
