"""The public API of the `turnstore` package, pinned (the README's snippets: tests/test_readme.py)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import turnstore
import turnstore.client
import turnstore.results
from turnstore import EventStore, HistoryStore, TurnstoreEventStore, TurnstoreHistoryStore
from turnstore.testing import InMemoryEventStore, InMemoryHistoryStore

PUBLIC_NAMES = [
    "AgentEventEnvelope",
    "BatchDelete",
    "BatchDeletePrefix",
    "BatchResult",
    "BatchSave",
    "Blob",
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
    """What reads return is documented where users look."""
    for name in ("BatchResult", "Blob", "SnapshotVersionInfo", "StoredEvent", "VersionedSnapshot"):
        cls = getattr(turnstore, name)
        assert cls.__module__ == "turnstore.results", name
        assert cls.__doc__, name
        assert getattr(turnstore.results, name) is cls
        # No second, older path to it (0.1.0 is unreleased: nothing to stay compatible with).
        assert not hasattr(turnstore.client, name), name
    assert sorted(turnstore.results.__all__) == [
        "BatchResult",
        "Blob",
        "SnapshotVersionInfo",
        "StoredEvent",
        "VersionedSnapshot",
    ]


CLIENT_DIR = Path(turnstore.__file__).parent


def _client_modules() -> list[Path]:
    return sorted(
        path
        for path in CLIENT_DIR.rglob("*.py")
        if path.relative_to(CLIENT_DIR).parts[0] != "v1" and path.name != "__init__.py"
    )


def test_each_module_exports_only_what_it_defines() -> None:
    """One import path per name: no module lists in ``__all__`` a name it imports.

    The package's ``__init__`` is the one place that gathers names from the
    others (it is skipped here); every other module exports only its own.
    """
    modules = _client_modules()
    assert len(modules) > 20
    for path in modules:
        tree = ast.parse(path.read_text())
        imported: set[str] = set()
        exported: list[str] = []
        for node in tree.body:
            if isinstance(node, ast.ImportFrom | ast.Import):
                imported |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
            elif isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets
            ):
                exported = list(ast.literal_eval(node.value))
        where = path.relative_to(CLIENT_DIR)
        assert sorted(set(exported) & imported) == [], f"{where} re-exports what it imports"


def test_async_objects_close_with_aclose_only() -> None:
    """One closing verb across the client: ``aclose()``, as ``contextlib.aclosing`` expects."""
    for cls in (
        turnstore.TurnstoreClient,
        turnstore.TurnstoreEventStore,
        turnstore.Replay,
        turnstore.EventAppender,
    ):
        assert inspect.iscoroutinefunction(cls.aclose), cls
        assert not hasattr(cls, "close"), cls


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
