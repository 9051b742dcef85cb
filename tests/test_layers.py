"""The server's folders are its layers, and imports point down only.

Layers, lowest first (``turnstore.server.`` omitted):

- ``storage``: the one storage-engine interface, its values, errors, input
  checks and record framing. No gRPC, no generated code, no engine.
- ``storage.lmdb`` and ``storage.postgres``: the two engines. Each may import
  ``storage`` and itself, never the other engine nor anything above.
- ``replay``: the replay loop, followers and the writer-to-loop hand-off.
- ``access``: scopes, the scoped view of an engine, sessions.
- ``api``: the edges. ``api.grpc`` and ``api.http`` never import each other.
- ``daemon``: the command, options and the app that wires it all together.

Only ``storage`` (its factory) names an engine package; everything above it
knows a backend through :class:`~turnstore.server.storage.interface.StorageEngine`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVER_DIR = Path(__file__).resolve().parent.parent / "server" / "turnstore" / "server"
PREFIX = "turnstore.server"

# Lowest first; a module may import its own layer and those before it.
LAYERS = ["storage", "replay", "access", "api", "daemon"]
ENGINES = ["storage.lmdb", "storage.postgres"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(SERVER_DIR).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == PREFIX:
                names += [f"{PREFIX}.{alias.name}" for alias in node.names]
            else:
                names += [f"{node.module}.{alias.name}" for alias in node.names]
                names.append(node.module)
    return names


def _ours(name: str) -> str | None:
    if name == PREFIX or not name.startswith(PREFIX + "."):
        return None
    return name[len(PREFIX) + 1 :]


def _layer(module: str) -> str:
    return module.split(".")[0]


def _engine(module: str) -> str | None:
    return next((e for e in ENGINES if module == e or module.startswith(e + ".")), None)


MODULES = sorted(SERVER_DIR.rglob("*.py"))


def test_every_module_sits_in_a_layer() -> None:
    stray = [
        _module_name(p)
        for p in MODULES
        if _module_name(p) and _layer(_module_name(p)) not in LAYERS
    ]
    assert stray == []
    assert len(MODULES) > 40


def _violations(me: str, imports: list[str]) -> list[str]:
    my_layer = LAYERS.index(_layer(me))
    my_engine = _engine(me)
    found: list[str] = []
    for raw in imports:
        if my_layer == 0 and raw.split(".")[0] in ("grpc", "grpc_health", "grpc_reflection"):
            found.append(f"{me} imports {raw} (storage never speaks gRPC)")
        if my_layer == 0 and raw.startswith("turnstore.v1"):
            found.append(f"{me} imports {raw} (storage never sees generated code)")
        if me.startswith("api.http") and raw.split(".")[0] == "grpc":
            found.append(f"{me} imports {raw}: the HTTP edge never speaks gRPC")
        other = _ours(raw)
        if other is None or _layer(other) not in LAYERS:
            continue
        if LAYERS.index(_layer(other)) > my_layer:
            found.append(f"{me} imports {other}, a higher layer")
        their_engine = _engine(other)
        if their_engine and their_engine != my_engine and me != "storage.factory":
            found.append(f"{me} imports {other}: only the factory names an engine")
        if me.startswith("api.grpc") and other.startswith("api.http"):
            found.append(f"{me} imports {other}: gRPC and HTTP edges stay apart")
        if me.startswith("api.http") and other.startswith("api.grpc"):
            found.append(f"{me} imports {raw}: gRPC and HTTP edges stay apart")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p) or "server")
def test_imports_point_down(path: Path) -> None:
    me = _module_name(path)
    if not me:
        return  # the package's own __init__ imports nothing of ours
    assert _violations(me, _imports(path)) == []


def _module_paths() -> dict[str, Path]:
    return {_module_name(p): p for p in MODULES if _module_name(p)}


def _grpc_reached_from(start: str, paths: dict[str, Path]) -> list[str]:
    """The chains of our imports from ``start`` that end in a module importing grpc."""
    found: list[str] = []
    seen = {start}
    todo = [[start]]
    while todo:
        chain = todo.pop()
        for raw in _imports(paths[chain[-1]]):
            if raw.split(".")[0] == "grpc":
                found.append(" -> ".join([*chain, raw]))
            other = _ours(raw)
            # `from a.b import c` names a.b.c: c is a module or a name in a.b.
            while other and other not in paths:
                other = other.rpartition(".")[0]
            if other and other not in seen:
                seen.add(other)
                todo.append([*chain, other])
    return found


def test_the_http_edge_reaches_no_grpc_through_what_it_imports() -> None:
    """Not directly (above) and not through a shared module such as api.errors."""
    paths = _module_paths()
    http = [name for name in paths if name.startswith("api.http")]
    assert http
    assert [chain for name in http for chain in _grpc_reached_from(name, paths)] == []
    # The walk can fail: the gRPC edge's modules do reach grpc.
    assert _grpc_reached_from("api.grpc.event_store", paths)


@pytest.mark.parametrize(
    ("module", "planted"),
    [
        ("storage.values", "turnstore.server.daemon.app"),
        ("storage.values", "grpc"),
        ("storage.records", "turnstore.v1.turnstore_pb2"),
        ("storage.lmdb.engine", "turnstore.server.storage.postgres.engine"),
        ("replay.followers", "turnstore.server.api.grpc.event_store"),
        ("daemon.app", "turnstore.server.storage.lmdb.engine"),
        ("api.http.routes", "turnstore.server.api.grpc.ingress"),
        ("api.grpc.event_store", "turnstore.server.api.http.sse"),
        ("api.http.server", "grpc"),
        ("storage.errors", "turnstore.server.api.errors"),
    ],
)
def test_the_layer_rule_catches_a_planted_import(module: str, planted: str) -> None:
    # The rule above must be able to fail.
    assert _violations(module, [planted]) != []


REPO = SERVER_DIR.parent.parent.parent
MAX_MODULE_LINES = 400


def _python_modules() -> list[Path]:
    found = [*SERVER_DIR.rglob("*.py"), *(REPO / "client" / "python").rglob("*.py")]
    return sorted(p for p in found if "_pb2" not in p.name)


def test_no_module_does_two_jobs_by_length() -> None:
    long = {
        str(p.relative_to(REPO)): n
        for p in _python_modules()
        if (n := p.read_text().count("\n")) > MAX_MODULE_LINES
    }
    assert long == {}


def _above_storage() -> list[Path]:
    return [p for p in MODULES if _module_name(p) and _layer(_module_name(p)) != "storage"]


def test_nothing_above_storage_probes_an_engine_for_a_feature() -> None:
    # A feature one backend lacks is a no-op in the interface, not a getattr.
    probes = []
    for path in _above_storage():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and node.args
                and "engine" in ast.unparse(node.args[0])
            ):
                probes.append(f"{_module_name(path)}: {ast.unparse(node)}")
    assert probes == []


def test_the_storage_interface_speaks_epochs_and_no_backend_of_its_own() -> None:
    from turnstore.server.storage import interface, values

    members = {name for name in vars(interface.StorageEngine) if not name.startswith("_")}
    # LMDB's map and space guard, and the engines' thread numbering, stay inside them.
    assert members.isdisjoint({"map_size", "space", "epoch_mask"}), members
    assert {"add_wake_all_listener", "add_space_level_listener", "startup_report"} <= members
    for value in (values.ThreadView, values.ReplayStep):
        fields = set(value.__dataclass_fields__)
        assert "epoch" in fields and "thread_number" not in fields, value
