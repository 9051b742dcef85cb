"""The public API of the `turnstore` package, pinned, and the README example."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import turnstore
import turnstore.client
import turnstore.results
from tests.support.daemon import Daemon
from turnstore import EventStore, HistoryStore, TurnstoreEventStore, TurnstoreHistoryStore
from turnstore.testing import InMemoryEventStore, InMemoryHistoryStore

README = Path(__file__).parent.parent / "README.md"

PUBLIC_NAMES = [
    "AgentEventEnvelope",
    "CaughtUp",
    "ClientTls",
    "ConversationSnapshot",
    "CursorOutOfRangeError",
    "DeadlineExceededError",
    "EventAppender",
    "EventFormatError",
    "EventIdConflictError",
    "EventStore",
    "FailedPreconditionError",
    "FollowerTooSlowError",
    "HistoryStore",
    "InvalidArgumentError",
    "PermissionDeniedError",
    "Replay",
    "ReplayItem",
    "ResourceExhaustedError",
    "RetryPolicy",
    "ServerError",
    "SnapshotFormatError",
    "SnapshotVersionInfo",
    "StorageFullError",
    "StoredEvent",
    "StoredTurnEvents",
    "ThreadCleared",
    "ThreadClearedError",
    "TurnAlreadyFinishedError",
    "TurnFinished",
    "TurnFinishedError",
    "TurnstoreClient",
    "TurnstoreError",
    "TurnstoreEventStore",
    "TurnstoreHistoryStore",
    "UnauthenticatedError",
    "UnavailableError",
    "VersionConflictError",
    "VersionedSnapshot",
]


def test_public_names_are_pinned() -> None:
    assert sorted(turnstore.__all__) == PUBLIC_NAMES
    for name in PUBLIC_NAMES:
        assert getattr(turnstore, name) is not None


def test_result_types_live_in_a_public_module() -> None:
    """What reads return is documented where users look, and old imports still work."""
    for name in ("SnapshotVersionInfo", "StoredEvent", "VersionedSnapshot"):
        cls = getattr(turnstore, name)
        assert cls.__module__ == "turnstore.results", name
        assert cls.__doc__, name
        assert getattr(turnstore.results, name) is cls
        assert getattr(turnstore.client, name) is cls, name  # imports from before the move
    assert sorted(turnstore.results.__all__) == [
        "SnapshotVersionInfo",
        "StoredEvent",
        "VersionedSnapshot",
    ]


def test_every_error_derives_from_the_base() -> None:
    errors = [getattr(turnstore, n) for n in PUBLIC_NAMES if n.endswith("Error")]
    assert len(errors) == 19
    assert all(issubclass(cls, turnstore.TurnstoreError) for cls in errors)


def _methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if not name.startswith("_") and callable(member)
    }


def test_implementations_match_the_protocols_signatures() -> None:
    for protocol, implementations in (
        (EventStore, (InMemoryEventStore, TurnstoreEventStore)),
        (HistoryStore, (InMemoryHistoryStore, TurnstoreHistoryStore)),
    ):
        wanted = _methods(protocol)
        assert wanted, protocol
        for implementation in implementations:
            have = _methods(implementation)
            for name, signature in wanted.items():
                # An implementation may add keyword-only options with defaults
                # (TurnstoreEventStore's per-call `timeout`); nothing else differs.
                options = [
                    p
                    for p in have[name].parameters.values()
                    if p.kind is p.KEYWORD_ONLY and p.default is not p.empty
                ]
                for option in options:
                    assert option.name not in signature.parameters, (implementation, name)
                trimmed = have[name].replace(
                    parameters=[p for p in have[name].parameters.values() if p not in options]
                )
                assert str(trimmed) == str(signature), (implementation, name)
                assert inspect.iscoroutinefunction(getattr(implementation, name))


def test_the_readme_example_runs_against_a_daemon(daemon: Daemon) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert len(blocks) == 1
    code = blocks[0].replace('"127.0.0.1:7070"', repr(daemon.target))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Hello!" in result.stdout.splitlines()
    assert "stored at position 2" in result.stdout
    assert (
        "ConversationSnapshot(messages=[{'role': 'user'}], pinned=[False], version=1)"
        in result.stdout
    )
