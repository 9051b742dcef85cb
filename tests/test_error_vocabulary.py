"""The error reasons are defined once, by the proto's ErrorReason enum, and every map follows it.

The daemon's exceptions, its status table, the auth interceptor, and the
Python, TypeScript and Rust clients' maps are each checked against the enum,
and the three clients against each other (the same kind for each reason,
docs/clients.md's table), so a reason added in one place and forgotten in
another fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc

from turnstore import _status, errors
from turnstore.server.api.grpc import interceptors
from turnstore.server.api.grpc.service import STATUS_BY_ERROR, status_for
from turnstore.server.storage import errors as server_errors
from turnstore.v1 import turnstore_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "ERROR_REASON_"


def proto_reasons() -> set[str]:
    names = pb.ErrorReason.keys()
    assert all(name.startswith(PREFIX) for name in names)
    return {name[len(PREFIX) :].lower() for name in names} - {"unspecified"}


def engine_error_classes() -> list[type[server_errors.EngineError]]:
    found: list[type[server_errors.EngineError]] = []
    pending: list[type[server_errors.EngineError]] = [server_errors.EngineError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def interceptor_reasons() -> set[str]:
    source = Path(interceptors.__file__).read_text()
    return set(re.findall(r'"turnstore-error",\s*"(\w+)"', source)) | {
        cls.reason
        for cls in engine_error_classes()
        if cls.__name__ in source and cls is not server_errors.EngineError
    }


def typescript_reasons() -> set[str]:
    return set(typescript_kinds())


def typescript_kinds() -> dict[str, str]:
    """Each reason of the TypeScript client's BY_REASON with its class, without ``Error``."""
    source = (ROOT / "client" / "typescript" / "src" / "errors.ts").read_text()
    block = source.split("const BY_REASON", 1)[1].split("]);", 1)[0]
    return {
        reason: cls.removesuffix("Error")
        for reason, cls in re.findall(r'\["(\w+)",\s*(\w+)\]', block)
    }


RUST_ERRORS = ROOT / "client" / "rust" / "src" / "error.rs"


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


def test_the_proto_enum_names_every_reason_the_daemon_sends() -> None:
    sent = {cls.reason for cls in engine_error_classes()} | interceptor_reasons()
    assert sent == proto_reasons()


def test_every_daemon_error_has_its_status_in_the_one_table() -> None:
    for cls in engine_error_classes():
        assert any(base in STATUS_BY_ERROR for base in cls.__mro__), cls
    assert status_for(server_errors.EngineError("x")) == grpc.StatusCode.INTERNAL


def test_the_python_client_maps_every_reason_and_exposes_code_and_reason() -> None:
    assert set(_status._BY_REASON) == proto_reasons()
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


def test_the_typescript_client_maps_every_reason() -> None:
    assert typescript_reasons() == proto_reasons()


def test_the_rust_client_maps_every_reason_to_its_own_kind() -> None:
    mapped = rust_kinds()
    assert set(mapped) == proto_reasons(), (
        f"proto reasons without a Rust ErrorKind: {sorted(proto_reasons() - set(mapped))}; "
        f"Rust reasons the proto lacks: {sorted(set(mapped) - proto_reasons())}"
    )


def test_the_three_clients_give_each_reason_the_same_kind() -> None:
    python = {
        reason: cls.__name__.removesuffix("Error") for reason, cls in _status._BY_REASON.items()
    }
    assert typescript_kinds() == python
    assert rust_kinds() == python


def test_the_rust_reader_fails_for_a_reason_without_a_kind(tmp_path: Path) -> None:
    """The check above can fail: error.rs without its follower_too_slow arm is caught."""
    source = RUST_ERRORS.read_text()
    arm = '        "follower_too_slow" => ErrorKind::FollowerTooSlow,\n'
    assert arm in source
    crippled = tmp_path / "error.rs"
    crippled.write_text(source.replace(arm, ""))
    assert "follower_too_slow" in proto_reasons() - set(rust_kinds(crippled))


def test_the_contract_page_lists_every_reason() -> None:
    page = (ROOT / "docs" / "contract.md").read_text()
    listed = set(re.findall(r"^\| `(\w+)` \|", page, re.MULTILINE))
    assert listed == proto_reasons()
