"""The error reasons are defined once, by the proto's ErrorReason enum, and every map follows it.

The daemon's exceptions, its status table, the auth interceptor, and the
Python and TypeScript clients' maps are each checked against the enum, so a
reason added in one place and forgotten in another fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc

from turnstore import _status, errors
from turnstore.server import errors as server_errors
from turnstore.server import interceptors
from turnstore.server.service import STATUS_BY_ERROR, status_for
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
    source = (ROOT / "client" / "typescript" / "src" / "errors.ts").read_text()
    block = source.split("const BY_REASON", 1)[1].split("]);", 1)[0]
    return set(re.findall(r'\["(\w+)",', block))


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


def test_the_contract_page_lists_every_reason() -> None:
    page = (ROOT / "docs" / "contract.md").read_text()
    listed = set(re.findall(r"^\| `(\w+)` \|", page, re.MULTILINE))
    assert listed == proto_reasons()
