/**
 * The TypeScript client's driver of the cross-language conformance run
 * (tests/conformance/README.md, tests/test_cross_language.py). Not a
 * node:test file.
 *
 * Usage: `node dist/test/conformance-driver.js STEPS_FILE TARGET` (with
 * `TURNSTORE_WRITE_MODE=unary`, writes go as unary calls). Each
 * rendered step is executed through the client's public API and its outcome
 * printed as one JSON line `{"step": i, "outcome": {...}}`; a TurnstoreError
 * is an outcome too, its class turned back into the proto's ErrorReason
 * string by ERROR_REASONS.
 */
import { readFileSync } from "node:fs";

import {
  CursorOutOfRangeError,
  DeadlineExceededError,
  EventIdConflictError,
  FollowerTooSlowError,
  InvalidArgumentError,
  PermissionDeniedError,
  StorageFullError,
  ThreadClearedError,
  TurnAlreadyFinishedError,
  TurnFinishedError,
  TurnstoreClient,
  TurnstoreError,
  UnauthenticatedError,
  UnavailableError,
  VersionConflictError,
  batchDelete,
  batchDeletePrefix,
  batchSave,
  envelopeFromJson,
  envelopeToJson,
} from "../src/index";
import type { BatchOperation, ConversationSnapshot, StoredTurn } from "../src/index";

type Json = Record<string, unknown>;
/** A rendered step: its fields are checked by the client, not here. */
type Step = Record<string, any>;

/** The client's error classes, most specific first, as reason strings. */
const ERROR_REASONS: [new (...args: never[]) => TurnstoreError, string][] = [
  [InvalidArgumentError, "invalid_argument"],
  [TurnFinishedError, "turn_finished"],
  [TurnAlreadyFinishedError, "turn_already_finished"],
  [EventIdConflictError, "event_id_conflict"],
  [VersionConflictError, "version_conflict"],
  [ThreadClearedError, "thread_cleared"],
  [CursorOutOfRangeError, "cursor_out_of_range"],
  [StorageFullError, "storage_full"],
  [FollowerTooSlowError, "follower_too_slow"],
  [UnauthenticatedError, "unauthenticated"],
  [PermissionDeniedError, "permission_denied"],
  [UnavailableError, "unavailable"],
  [DeadlineExceededError, "deadline_exceeded"],
];

function errorOutcome(error: TurnstoreError): Json {
  const found = ERROR_REASONS.find(([kind]) => error instanceof kind);
  const outcome: Json = { error: found?.[1] ?? `other:${error.constructor.name}` };
  if (error instanceof VersionConflictError) {
    outcome.current_version = error.currentVersion ?? null;
  }
  return outcome;
}

function turnJson(turn: StoredTurn): Json {
  return {
    turn: turn.turn,
    finished: turn.finished,
    events: turn.events.map((e) => envelopeToJson(e.envelope)),
  };
}

/** A scenario's batch operation ({save|delete|delete_prefix: {...}}) as the client's. */
function batchOperation(operation: Step): BatchOperation {
  if (operation.save !== undefined) {
    const save = operation.save;
    return batchSave(save.key, Buffer.from(save.data_base64, "base64"), {
      contentType: save.content_type,
      ...(save.expected_version !== undefined && { expectedVersion: save.expected_version }),
    });
  }
  if (operation.delete !== undefined) {
    const expected = operation.delete.expected_version;
    return batchDelete(
      operation.delete.key,
      expected === undefined ? {} : { expectedVersion: expected },
    );
  }
  return batchDeletePrefix(operation.delete_prefix.prefix);
}

/** Replay cursors saved by name: [after, epoch]. */
const cursors = new Map<string, [number | undefined, number | undefined]>();

async function run(client: TurnstoreClient, step: Step): Promise<Json> {
  const events = client.events;
  switch (step.op) {
    case "append": {
      const [position] = await events.append(step.thread, step.turn, envelopeFromJson(step.event));
      return { position };
    }
    case "append_many": {
      const envelopes = (step.events as unknown[]).map(envelopeFromJson);
      return { positions: await events.append(step.thread, step.turn, envelopes) };
    }
    case "finish_turn":
      await events.finishTurn(step.thread, step.turn); // its result is not compared
      return {};
    case "get_turn": {
      const turn = await events.getTurn(step.thread, step.turn);
      return { turn: turn === undefined ? null : turnJson(turn) };
    }
    case "get_turns":
      return { turns: (await events.getTurns(step.thread)).map(turnJson) };
    case "get_events":
      return { events: (await events.getEvents(step.thread)).map(envelopeToJson) };
    case "get_events_since":
      return {
        events: (await events.getEventsSince(step.thread, step.offset)).map(envelopeToJson),
      };
    case "event_count":
      return { count: await events.eventCount(step.thread) };
    case "clear":
      await events.clear(step.thread); // its result is not compared
      return {};
    case "replay":
      return replay(client, step);
    case "save": {
      const history = client.history(step.key);
      const options = "expected_version" in step ? { expectedVersion: step.expected_version } : {};
      return { version: await history.save(step.snapshot as ConversationSnapshot, options) };
    }
    case "load": {
      const loaded = await client.history(step.key).loadVersioned();
      return loaded === undefined
        ? { snapshot: null, version: null }
        : { snapshot: loaded.snapshot, version: loaded.version };
    }
    case "save_bytes": {
      const data = Buffer.from(step.data_base64, "base64");
      const options =
        step.expected_version === undefined ? {} : { expectedVersion: step.expected_version };
      return {
        version: await client.history(step.key).saveBytes(data, step.content_type, options),
      };
    }
    case "load_bytes": {
      const blob = await client.history(step.key).loadBytes();
      return blob === undefined
        ? { blob: null }
        : {
            data_base64: Buffer.from(blob.data).toString("base64"),
            content_type: blob.contentType,
            version: blob.version,
          };
    }
    case "list_keys": {
      const prefix: string = step.prefix ?? "";
      const keys: Json[] = [];
      for await (const info of client.listKeys({
        prefix,
        startAfter: step.start_after ?? "",
        endBefore: step.end_before ?? "",
        limit: step.limit ?? 0,
        newestFirst: step.newest_first ?? false,
      })) {
        keys.push({ key: info.key.slice(prefix.length), version: info.version });
      }
      return { keys };
    }
    case "batch": {
      const results = await client.batch(step.operations.map(batchOperation));
      return {
        results: results.map((r) => ({
          version: r.version,
          removed_versions: r.removedVersions,
          removed_keys: r.removedKeys,
        })),
      };
    }
    default:
      // An operation this driver does not know (a new one in the scenario).
      return { unsupported: step.op };
  }
}

async function replay(client: TurnstoreClient, step: Step): Promise<Json> {
  const [savedAfter, epoch] = cursors.get(step.cursor) ?? [undefined, undefined];
  const after: number | undefined = step.after ?? savedAfter;
  const items: Json[] = [];
  const stream = client.events.replay(step.thread, {
    ...(after !== undefined && { after }),
    ...(epoch !== undefined && { epoch }),
  });
  for await (const item of stream) {
    if (item.kind === "event") {
      const { position, turn, envelope } = item.event;
      items.push({ position, turn, event: envelopeToJson(envelope) });
    } else if (item.kind === "turn_finished") {
      items.push({
        turn_finished: item.turn,
        event_count: item.eventCount,
        last_position: item.lastPosition ?? null,
      });
    } else if (item.kind === "caught_up") {
      items.push({ caught_up: item.nextPosition });
    } else {
      items.push({ thread_cleared: item.nextPosition });
    }
  }
  if (step.save_cursor !== undefined) {
    cursors.set(step.save_cursor, [stream.lastPosition, stream.epoch]);
  }
  return { items, last_position: stream.lastPosition ?? null };
}

async function main(): Promise<void> {
  const [stepsFile, target] = process.argv.slice(2);
  if (stepsFile === undefined || target === undefined) {
    throw new Error("usage: conformance-driver.js STEPS_FILE TARGET");
  }
  const steps = JSON.parse(readFileSync(stepsFile, "utf8")) as Step[];
  const writeMode = process.env.TURNSTORE_WRITE_MODE === "unary" ? "unary" : "stream";
  const client = new TurnstoreClient(target, { writeMode });
  try {
    await client.waitForReady();
    for (const [index, step] of steps.entries()) {
      let outcome: Json;
      try {
        outcome = await run(client, step);
      } catch (error) {
        if (!(error instanceof TurnstoreError)) throw error;
        outcome = errorOutcome(error);
      }
      process.stdout.write(`${JSON.stringify({ step: index, outcome })}\n`);
    }
  } finally {
    client.close();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
