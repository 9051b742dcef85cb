"""The error reasons are defined once, by the proto's ErrorReason enum, and every map follows it.

Six vocabularies must name the same reasons: the proto's enum, the daemon's
error classes (each names its reason once, in the layer that raises it), the
edge's one status table (``server/turnstore/server/api/errors.py``, used by
both gRPC and HTTP), and the Python, TypeScript and Rust clients' maps back
to their errors. A reason added in one place and forgotten in another fails
here, naming where it is missing; the three clients also give each reason
the same kind (docs/clients.md's table), and the table gives each reason the
gRPC code the proto and docs/contract.md document.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from turnstore import _status, errors
from turnstore.server.access import errors as access_errors
from turnstore.server.api.errors import INTERNAL, STATUS_BY_REASON, EdgeStatus, status_of
from turnstore.server.api.grpc.servicer import status_for
from turnstore.server.replay import errors as replay_errors
from turnstore.server.storage import errors as server_errors
from turnstore.v1 import turnstore_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "ERROR_REASON_"
PROTO = ROOT / "proto" / "turnstore" / "v1" / "turnstore.proto"
TYPESCRIPT_ERRORS = ROOT / "client" / "typescript" / "src" / "errors.ts"
RUST_ERRORS = ROOT / "client" / "rust" / "src" / "error.rs"


def proto_reasons() -> set[str]:
    names = pb.ErrorReason.keys()
    assert all(name.startswith(PREFIX) for name in names)
    return {name[len(PREFIX) :].lower() for name in names} - {"unspecified"}


def daemon_error_classes() -> list[type[server_errors.DaemonError]]:
    """Every error class the daemon answers with: DaemonError and all its subclasses.

    The layers that raise their own (replay, access) are imported above, so
    their classes are among the subclasses.
    """
    assert issubclass(replay_errors.FollowerTooSlowError, server_errors.DaemonError)
    assert issubclass(access_errors.UnauthenticatedError, server_errors.DaemonError)
    found: list[type[server_errors.DaemonError]] = []
    pending: list[type[server_errors.DaemonError]] = [server_errors.DaemonError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def typescript_kinds(path: Path = TYPESCRIPT_ERRORS) -> dict[str, str]:
    """Each reason of the TypeScript client's BY_REASON with its class, without ``Error``."""
    source = path.read_text()
    block = source.split("const BY_REASON", 1)[1].split("]);", 1)[0]
    pairs = re.findall(r'\["(\w+)",\s*(\w+)\]', block)
    assert pairs, "BY_REASON was not parsed"
    mapping = {reason: cls.removesuffix("Error") for reason, cls in pairs}
    assert len(mapping) == len(pairs), "a reason is mapped twice"
    return mapping


def rust_kinds(path: Path = RUST_ERRORS) -> dict[str, str]:
    """Each reason of the Rust client's ``kind_of_reason`` with its ``ErrorKind`` variant.

    Read from the source (no cargo build needed); every variant named must be
    one ``ErrorKind`` declares, so a typo here cannot pass.
    """
    source = path.read_text()
    enum = source.split("pub enum ErrorKind {", 1)[1].split("\n}", 1)[0]
    variants = set(re.findall(r"^    (\w+),$", enum, re.MULTILINE))
    assert {"InvalidArgument", "Server"} <= variants, "ErrorKind was not parsed"
    body = source.split("fn kind_of_reason(", 1)[1].split("\n}", 1)[0]
    arms = re.findall(r'^\s*"(\w+)" => ErrorKind::(\w+),$', body, re.MULTILINE)
    assert arms, "kind_of_reason was not parsed"
    mapping = dict(arms)
    assert len(mapping) == len(arms), "a reason is mapped twice"
    unknown = set(mapping.values()) - variants
    assert not unknown, f"kinds ErrorKind does not declare: {unknown}"
    return mapping


def python_kinds() -> dict[str, str]:
    return {
        reason: cls.__name__.removesuffix("Error") for reason, cls in _status._BY_REASON.items()
    }


# Each vocabulary by where it is written.
VOCABULARIES: dict[str, Callable[[], set[str]]] = {
    "proto ErrorReason": proto_reasons,
    "daemon error classes": lambda: {cls.reason for cls in daemon_error_classes()},
    "status table (api/errors.py)": lambda: set(STATUS_BY_REASON),
    "Python client (_status.py)": lambda: set(python_kinds()),
    "TypeScript client (errors.ts)": lambda: set(typescript_kinds()),
    "Rust client (error.rs)": lambda: set(rust_kinds()),
}


def out_of_step(vocabularies: dict[str, set[str]]) -> list[str]:
    """Where each vocabulary differs from the proto's: what it lacks, what it has too many."""
    expected = vocabularies["proto ErrorReason"]
    found = []
    for name, reasons in vocabularies.items():
        if expected - reasons:
            found.append(f"{name} lacks {sorted(expected - reasons)}")
        if reasons - expected:
            found.append(f"{name} has {sorted(reasons - expected)}, which the proto lacks")
    return found


def test_every_vocabulary_names_the_proto_reasons() -> None:
    vocabularies = {name: read() for name, read in VOCABULARIES.items()}
    assert len(vocabularies["proto ErrorReason"]) >= 17
    assert out_of_step(vocabularies) == []


@pytest.mark.parametrize("name", [name for name in VOCABULARIES if name != "proto ErrorReason"])
def test_a_reason_missing_from_any_vocabulary_fails(name: str) -> None:
    """The check above can fail: each vocabulary without one reason is caught, and named."""
    vocabularies = {each: read() for each, read in VOCABULARIES.items()}
    vocabularies[name] = vocabularies[name] - {"follower_too_slow"}
    assert out_of_step(vocabularies) == [f"{name} lacks ['follower_too_slow']"]
    vocabularies[name] = vocabularies[name] | {"follower_too_slow", "brand_new"}
    assert out_of_step(vocabularies) == [f"{name} has ['brand_new'], which the proto lacks"]


@pytest.mark.parametrize(
    ("read", "path", "line"),
    [
        (typescript_kinds, TYPESCRIPT_ERRORS, '  ["follower_too_slow", FollowerTooSlowError],\n'),
        (rust_kinds, RUST_ERRORS, '        "follower_too_slow" => ErrorKind::FollowerTooSlow,\n'),
    ],
    ids=["typescript", "rust"],
)
def test_the_client_readers_see_a_reason_removed_from_the_source(
    read: Callable[[Path], dict[str, str]], path: Path, line: str, tmp_path: Path
) -> None:
    """Parsing the sources cannot hide a missing reason: a file without one arm lacks it."""
    source = path.read_text()
    assert line in source
    crippled = tmp_path / path.name
    crippled.write_text(source.replace(line, ""))
    assert set(read(path)) - set(read(crippled)) == {"follower_too_slow"}


def test_each_error_class_names_its_reason_once() -> None:
    # Only DaemonError itself and subclasses that answer as their base
    # (TurnTooLargeError; NextPositionConflictError, a conditional append's
    # version_conflict) inherit a reason; every other reason is one class's.
    owners: dict[str, list[str]] = {}
    for cls in daemon_error_classes():
        if "reason" in vars(cls):
            owners.setdefault(cls.reason, []).append(cls.__name__)
    assert {reason: names for reason, names in owners.items() if len(names) > 1} == {}
    inheriting = {cls.__name__ for cls in daemon_error_classes() if "reason" not in vars(cls)}
    assert inheriting == {"EngineError", "TurnTooLargeError", "NextPositionConflictError"}


def test_the_errors_the_engine_never_raises_live_with_their_layer() -> None:
    answered = set(daemon_error_classes())
    for cls in (
        replay_errors.FollowerTooSlowError,
        access_errors.UnauthenticatedError,
        access_errors.PermissionDeniedError,
    ):
        assert not issubclass(cls, server_errors.EngineError), cls
        assert not hasattr(server_errors, cls.__name__), cls
        assert cls in answered


def documented_codes(text: str, pattern: str) -> dict[str, str]:
    return {reason.lower(): code for code, reason in re.findall(pattern, text, re.MULTILINE)}


def test_the_table_gives_each_reason_its_documented_grpc_code() -> None:
    """The codes of the table are those the proto's enum comments and docs/contract.md state."""
    table = {reason: status.grpc for reason, status in STATUS_BY_REASON.items()}
    proto = documented_codes(
        PROTO.read_text(),
        r"^  // ([A-Z_]+): [^\n]*\n(?:  //[^\n]*\n)*  ERROR_REASON_(\w+) = \d+;",
    )
    assert proto == table
    contract = {
        reason: code
        for reason, code in re.findall(
            r"^\| `(\w+)` \| ([A-Z_]+) \|", (ROOT / "docs" / "contract.md").read_text(), re.M
        )
    }
    assert contract == table


def test_both_edges_take_their_statuses_from_the_one_table() -> None:
    for cls in daemon_error_classes():
        error = cls.__new__(cls)  # the reason is all the lookup reads
        assert status_of(error) == STATUS_BY_REASON[cls.reason]
        assert status_for(error) == grpc.StatusCode[STATUS_BY_REASON[cls.reason].grpc]
    assert status_of(server_errors.EngineError("x")) == INTERNAL == EdgeStatus("INTERNAL", 500)
    # The HTTP statuses the HTTP listener has always answered with.
    http = {reason: status.http for reason, status in STATUS_BY_REASON.items()}
    assert {
        "invalid_argument": 400,
        "unauthenticated": 401,
        "permission_denied": 403,
        "thread_cleared": 409,
        "cursor_out_of_range": 416,
        "shutting_down": 503,
        "database_unavailable": 503,
        "internal": 500,
    }.items() <= http.items()


def test_the_python_client_maps_every_reason_and_exposes_code_and_reason() -> None:
    for reason in proto_reasons():
        error = _status.error_from_status(grpc.StatusCode.UNKNOWN, reason, "m")
        assert isinstance(error, errors.TurnstoreError)
        assert error.reason == reason and error.code == grpc.StatusCode.UNKNOWN
    finished = _status.error_from_status(
        grpc.StatusCode.FAILED_PRECONDITION, "turn_finished", "cannot append to finished turn 1"
    )
    assert isinstance(finished, errors.TurnFinishedError)
    assert (finished.code, finished.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "turn_finished",
    )
    # Raised by the client itself (or the in-memory stores): the class's own.
    assert errors.TurnFinishedError("x").reason == "turn_finished"
    assert errors.StorageFullError("x").code == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A class with a reason of its own is the one its reason maps to.
    for reason, cls in _status._BY_REASON.items():
        if "reason" in vars(cls):
            assert cls.reason == reason, cls


def test_the_three_clients_give_each_reason_the_same_kind() -> None:
    python = python_kinds()
    assert typescript_kinds() == python
    assert rust_kinds() == python


def test_the_contract_page_lists_every_reason() -> None:
    page = (ROOT / "docs" / "contract.md").read_text()
    listed = set(re.findall(r"^\| `(\w+)` \|", page, re.MULTILINE))
    assert listed == proto_reasons()
