"""The TypeScript client as another project gets it: its npm tarball, installed elsewhere.

`npm pack` of client/typescript (its prepack script generates the types and
compiles) writes the tarball into a temporary directory outside the checkout;
an empty project in another such directory installs it with `npm install
<tarball>` (its dependencies from the npm cache when they are there, else the
registry). From that project, an ESM script (`.mjs`, importing the package by
name) and a CommonJS one (`.cjs`, `require`) append to a real daemon, finish the
turn and read it back, and Python reads the same turn from the daemon. The
installed package must hold no path back into the checkout (the proto it loads
at run time ships inside it), and its type declarations must resolve for a
TypeScript file of the project (`tsc --noEmit`, strict, with the checkout's
pinned compiler used only as a tool: it resolves modules from the project).
The `@turnstore/client/resumable-stream` subpath export is run (ESM and
CommonJS) and type-checked the same way.

Only LMDB: what is tested here is the package, not the store behind the daemon.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest

from tests.commands import run_or_fail
from tests.daemon import Daemon
from turnstore import TurnstoreClient

REPO = Path(__file__).resolve().parent.parent
TS_DIR = REPO / "client" / "typescript"
PACKAGE_NAME = "@turnstore/client"
PROTO = "proto/turnstore/v1/turnstore.proto"

# The first call another project makes, as the package's README shows it: append,
# finish the turn, read it back; then an append to the finished turn must fail
# with the package's own error class. Prints one JSON line for the test.
ESM_SCRIPT = """\
import { TurnFinishedError, TurnstoreClient, newEnvelope } from "@turnstore/client";

const [target, thread] = process.argv.slice(2);
const client = new TurnstoreClient(target);
try {
  await client.waitForReady(30_000);
  const positions = await client.events.append(thread, 1, [
    newEnvelope({ type: "text_delta", message_id: "m1", delta: "Hel" }, 0),
    newEnvelope({ type: "text_delta", message_id: "m1", delta: "lo!" }, 1),
  ]);
  await client.events.finishTurn(thread, 1);
  const turn = await client.events.getTurn(thread, 1);
  let refused = "accepted";
  try {
    await client.events.append(thread, 1, newEnvelope({ type: "text_delta", delta: "late" }, 2));
  } catch (error) {
    refused = error instanceof TurnFinishedError ? error.reason : `other: ${error}`;
  }
  console.log(
    JSON.stringify({
      cwd: process.cwd(),
      resolved: import.meta.resolve("@turnstore/client"),
      positions,
      finished: turn?.finished,
      deltas: turn?.events.map((e) => e.envelope.event.delta),
      refused,
    }),
  );
} finally {
  client.close();
}
"""

# The same through require(), for the CommonJS claim of the README.
CJS_SCRIPT = """\
const { TurnFinishedError, TurnstoreClient, newEnvelope } = require("@turnstore/client");

async function main() {
  const [target, thread] = process.argv.slice(2);
  const client = new TurnstoreClient(target);
  try {
    await client.waitForReady(30_000);
    const positions = await client.events.append(thread, 1, [
      newEnvelope({ type: "text_delta", message_id: "m1", delta: "Hel" }, 0),
      newEnvelope({ type: "text_delta", message_id: "m1", delta: "lo!" }, 1),
    ]);
    await client.events.finishTurn(thread, 1);
    const turn = await client.events.getTurn(thread, 1);
    let refused = "accepted";
    try {
      await client.events.append(thread, 1, newEnvelope({ type: "text_delta", delta: "late" }, 2));
    } catch (error) {
      refused = error instanceof TurnFinishedError ? error.reason : `other: ${error}`;
    }
    console.log(
      JSON.stringify({
        cwd: process.cwd(),
        resolved: require.resolve("@turnstore/client"),
        positions,
        finished: turn?.finished,
        deltas: turn?.events.map((e) => e.envelope.event.delta),
        refused,
      }),
    );
  } finally {
    client.close();
  }
}
main().catch((error) => {
  console.error(error);
  process.exit(1);
});
"""

# The resumable-stream subpath, imported by name the way an AI SDK route imports
# Vercel's package: produce a stream, replay it once finished, ask for a missing
# one. Prints one JSON line for the test. IMPORT is replaced per module system.
RESUMABLE_SCRIPT = """\
IMPORT

async function main() {
  const [target, streamId] = process.argv.slice(2);
  const client = new TurnstoreClient(target);
  const context = createResumableStreamContext({ client, waitUntil: null });
  try {
    const make = () =>
      new ReadableStream({
        start(controller) {
          for (const text of ["data: a\\n\\n", "data: b\\n\\n", "data: c\\n\\n"]) {
            controller.enqueue(text);
          }
          controller.close();
        },
      });
    const read = async (stream) => {
      const chunks = [];
      for await (const chunk of stream) chunks.push(chunk);
      return chunks;
    };
    const produced = await read(await context.createNewResumableStream(streamId, make));
    const replayed = await read(await context.resumeExistingStream(streamId));
    const missing = await resumeStreamResponse(context, `${streamId}-missing`);
    console.log(
      JSON.stringify({
        produced,
        replayed,
        state: await context.hasExistingStream(streamId),
        missingStatus: missing.status,
      }),
    );
  } finally {
    client.close();
  }
}
main().catch((error) => {
  console.error(error);
  process.exit(1);
});
"""

RESUMABLE_IMPORTS = {
    "resumable.mjs": (
        'import { TurnstoreClient } from "@turnstore/client";\n'
        "import { createResumableStreamContext, resumeStreamResponse } from "
        '"@turnstore/client/resumable-stream";'
    ),
    "resumable.cjs": (
        'const { TurnstoreClient } = require("@turnstore/client");\n'
        "const { createResumableStreamContext, resumeStreamResponse } = "
        'require("@turnstore/client/resumable-stream");'
    ),
}

# Type-checked, not run: right uses must compile and a wrong one must be an error
# (an unused @ts-expect-error fails the check, so types resolving to `any` fail it).
TYPED_CHECK = """\
import { TurnstoreClient, TurnstoreError, newEnvelope } from "@turnstore/client";
import type { EventEnvelope, StoredTurn } from "@turnstore/client";
import {
  createResumableStreamContext,
  resumeStreamResponse,
} from "@turnstore/client/resumable-stream";
import type { ResumableStreamContext } from "@turnstore/client/resumable-stream";

export async function firstCall(target: string): Promise<StoredTurn | undefined> {
  const client: TurnstoreClient = new TurnstoreClient(target, { timeoutMs: 5_000 });
  const envelope: EventEnvelope = newEnvelope({ type: "text_delta", delta: "Hi" }, 0);
  const positions: number[] = await client.events.append("thread", 1, envelope);
  console.log(positions.length);
  try {
    return await client.events.getTurn("thread", 1);
  } catch (error) {
    if (error instanceof TurnstoreError) console.log(error.reason);
    throw error;
  } finally {
    client.close();
  }
}

// @ts-expect-error: a target is a string
new TurnstoreClient(7070);

export async function resumeRoute(streamId: string): Promise<Response> {
  const context: ResumableStreamContext = createResumableStreamContext({ waitUntil: null });
  const state: null | true | "DONE" = await context.hasExistingStream(streamId);
  const stream: ReadableStream<string> | null | undefined =
    await context.resumeExistingStream(streamId, 0);
  console.log(state, stream?.locked);
  // @ts-expect-error: skipCharacters is a number
  await context.resumeExistingStream(streamId, "10");
  return resumeStreamResponse(context, streamId);
}
"""

TSCONFIG = {
    "compilerOptions": {
        "target": "ES2022",
        "module": "nodenext",
        "moduleResolution": "nodenext",
        "strict": True,
        "noEmit": True,
        "skipLibCheck": False,
    },
    "files": ["check.mts"],
}


def _outside_checkout(path: Path) -> Path:
    """``path``, after checking that it is not inside the checkout."""
    resolved = path.resolve()
    assert resolved != REPO and REPO not in resolved.parents, (resolved, REPO)
    return resolved


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's tarball, made by `npm pack` (its prepack builds it) in a temporary directory.

    Installs client/typescript's development packages first (`npm ci`) when
    they are missing: the build needs the compiler and the type generator.
    """
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("the TypeScript package's test needs Node.js 20+ and npm on PATH")
    installed = TS_DIR / "node_modules" / ".package-lock.json"
    lock = TS_DIR / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        run_or_fail(["npm", "ci", "--no-audit", "--no-fund"], TS_DIR, timeout=300)
    destination = _outside_checkout(tmp_path_factory.mktemp("ts-pack"))
    run_or_fail(["npm", "pack", "--pack-destination", str(destination)], TS_DIR, timeout=300)
    packed = list(destination.glob("*.tgz"))
    assert [p.name for p in packed] == ["turnstore-client-0.1.0.tgz"], packed
    return packed[0]


@pytest.fixture(scope="module")
def project(tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty npm project outside the checkout with the tarball installed into it."""
    directory = _outside_checkout(tmp_path_factory.mktemp("ts-consumer"))
    (directory / "package.json").write_text(
        json.dumps({"name": "turnstore-consumer", "version": "1.0.0", "private": True})
    )
    run_or_fail(
        ["npm", "install", "--prefer-offline", "--no-audit", "--no-fund", str(tarball)],
        directory,
        timeout=300,
    )
    return directory


def _package_dir(project: Path) -> Path:
    return project / "node_modules" / "@turnstore" / "client"


def test_tarball_holds_the_compiled_package_its_proto_and_metadata(tarball: Path) -> None:
    """JS, declarations and the proto ship; tests do not; the manifest allows installing it."""
    with tarfile.open(tarball) as archive:
        names = {name.removeprefix("package/") for name in archive.getnames()}
        manifest_file = archive.extractfile("package/package.json")
        proto_file = archive.extractfile(f"package/{PROTO}")
        assert manifest_file is not None and proto_file is not None
        manifest: dict[str, Any] = json.load(manifest_file)
        shipped_proto = proto_file.read()
        license_file = archive.extractfile("package/LICENSE") if "LICENSE" in names else None
        shipped_license = None if license_file is None else license_file.read()

    for name in ("dist/src/index.js", "dist/src/index.d.ts", "dist/src/proto.js", "README.md"):
        assert name in names, sorted(names)
    assert not any(name.startswith("dist/test/") for name in names), sorted(names)
    # The proto it loads at run time is the repository's, byte for byte.
    assert shipped_proto == (REPO / PROTO).read_bytes()

    assert manifest["name"] == PACKAGE_NAME
    assert manifest["version"] == "0.1.0"
    assert manifest.get("private") is not True
    assert manifest["license"] == "Apache-2.0"
    exports = manifest["exports"]["."]
    assert next(iter(exports)) == "types", "the types condition must come first"
    for target in (exports["types"], exports["default"], manifest["main"], manifest["types"]):
        assert target.removeprefix("./") in names, target
    resumable = manifest["exports"]["./resumable-stream"]
    assert next(iter(resumable)) == "types", "the types condition must come first"
    for target in resumable.values():
        assert target.removeprefix("./") in names, target
    # For TypeScript's older "node" (node10) resolution, which ignores `exports`.
    assert manifest["typesVersions"]["*"]["resumable-stream"] == [
        resumable["types"].removeprefix("./")
    ]
    # The licence text travels with the package once the repository has one.
    if (REPO / "LICENSE").exists():
        assert shipped_license == (REPO / "LICENSE").read_bytes()


def test_installed_package_has_no_path_back_into_the_checkout(project: Path) -> None:
    """Nothing installed names the checkout or links into it; the proto is the package's own."""
    package = _package_dir(project)
    assert package.is_dir() and not package.is_symlink()
    checked = 0
    for path in package.rglob("*"):
        if path.is_symlink():
            target = path.resolve()
            assert REPO not in target.parents, (path, target)
        if path.is_file():
            assert str(REPO).encode() not in path.read_bytes(), path
            checked += 1
    assert checked > 20
    assert (package / PROTO).read_bytes() == (REPO / PROTO).read_bytes()


async def _python_reads(target: str, thread: str) -> tuple[bool, list[Any]]:
    async with TurnstoreClient(target) as client:
        turn = await client.events.get_turn(thread, 1)
    assert turn is not None
    return turn.finished, [event.event.get("delta") for event in turn.events]


@pytest.mark.parametrize("script", ["first.mjs", "first.cjs"])
def test_first_call_from_another_project(
    project: Path, start_daemon: Callable[..., Daemon], script: str
) -> None:
    """The package, imported by name (ESM and CommonJS), appends, finishes and reads a turn."""
    source = ESM_SCRIPT if script.endswith(".mjs") else CJS_SCRIPT
    (project / script).write_text(source)
    daemon = start_daemon("lmdb")
    thread = f"pkg-{uuid.uuid4().hex}"
    result = run_or_fail(["node", script, daemon.target, thread], project, timeout=120)
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert Path(report["cwd"]).resolve() == project
    resolved_url = urlparse(report["resolved"])
    resolved = Path(url2pathname(resolved_url.path) if resolved_url.scheme else report["resolved"])
    assert resolved == _package_dir(project) / "dist" / "src" / "index.js"
    assert report["positions"] == [0, 1]
    assert report["finished"] is True
    assert report["deltas"] == ["Hel", "lo!"]
    assert report["refused"] == "turn_finished"
    # What the package wrote is in the daemon, as any other client reads it.
    assert asyncio.run(_python_reads(daemon.target, thread)) == (True, ["Hel", "lo!"])


@pytest.mark.parametrize("script", sorted(RESUMABLE_IMPORTS))
def test_resumable_stream_subpath_from_another_project(
    project: Path, start_daemon: Callable[..., Daemon], script: str
) -> None:
    """`@turnstore/client/resumable-stream` (ESM and CommonJS) stores a stream in
    the daemon, replays it once finished, and answers 204 for a missing one."""
    (project / script).write_text(RESUMABLE_SCRIPT.replace("IMPORT", RESUMABLE_IMPORTS[script]))
    daemon = start_daemon("lmdb")
    stream_id = f"pkg-{uuid.uuid4().hex}"
    result = run_or_fail(["node", script, daemon.target, stream_id], project, timeout=120)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    chunks = ["data: a\n\n", "data: b\n\n", "data: c\n\n"]
    assert report == {
        "produced": chunks,
        "replayed": chunks,
        "state": "DONE",
        "missingStatus": 204,
    }


def test_type_declarations_resolve_in_another_project(project: Path) -> None:
    """A strict TypeScript file of the project type-checks against the installed declarations.

    The @ts-expect-error line must be an error, so declarations that are
    missing (implicit any: TS7016) or untyped fail the check either way.
    """
    (project / "check.mts").write_text(TYPED_CHECK)
    (project / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    tsc = TS_DIR / "node_modules" / "typescript" / "bin" / "tsc"
    run_or_fail(["node", str(tsc), "-p", str(project / "tsconfig.json")], project, timeout=300)
