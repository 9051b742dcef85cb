/**
 * Conversation snapshots: `{"version": 1, "messages": [...], "pinned": [...]}`
 * as JSON bytes, checked the way the contract's reader checks them.
 */
import { SnapshotFormatError } from "./errors";

/** The only snapshot format version there is. */
export const SNAPSHOT_VERSION = 1;

/** A whole conversation: opaque JSON messages, each with a pinned flag. */
export interface ConversationSnapshot {
  version: typeof SNAPSHOT_VERSION;
  messages: unknown[];
  pinned: boolean[];
}

/**
 * Checks `data` is a version-1 snapshot and returns it typed.
 *
 * Throws SnapshotFormatError unless it is an object whose `version` is 1 and
 * whose `messages` and `pinned` are arrays of the same length, `pinned`
 * holding only booleans.
 */
export function checkSnapshot(data: unknown): ConversationSnapshot {
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    throw new SnapshotFormatError("a snapshot must be a JSON object");
  }
  const { version, messages, pinned } = data as Record<string, unknown>;
  if (version !== SNAPSHOT_VERSION) {
    throw new SnapshotFormatError(
      `unsupported snapshot version ${JSON.stringify(version)} (only 1 is)`,
    );
  }
  if (!Array.isArray(messages) || !Array.isArray(pinned)) {
    throw new SnapshotFormatError("messages and pinned must be arrays");
  }
  if (messages.length !== pinned.length) {
    throw new SnapshotFormatError(
      `messages has ${messages.length} items but pinned has ${pinned.length}`,
    );
  }
  if (!pinned.every((flag) => typeof flag === "boolean")) {
    throw new SnapshotFormatError("pinned must hold only booleans");
  }
  return { version, messages, pinned: pinned as boolean[] };
}

/**
 * The JSON bytes of a snapshot, keys in the order version, messages, pinned.
 *
 * Throws SnapshotFormatError when the snapshot is invalid (see
 * {@link checkSnapshot}) or its messages are not JSON-serialisable.
 */
export function encodeSnapshot(snapshot: ConversationSnapshot): Buffer {
  const { version, messages, pinned } = checkSnapshot(snapshot);
  try {
    return Buffer.from(JSON.stringify({ version, messages, pinned }), "utf8");
  } catch (error) {
    throw new SnapshotFormatError(`snapshot is not JSON-serialisable: ${String(error)}`, {
      cause: error,
    });
  }
}

/** Parses and checks snapshot JSON bytes; throws SnapshotFormatError. */
export function decodeSnapshot(data: Buffer): ConversationSnapshot {
  let parsed: unknown;
  try {
    parsed = JSON.parse(data.toString("utf8"));
  } catch (error) {
    throw new SnapshotFormatError("snapshot is not valid JSON", { cause: error });
  }
  return checkSnapshot(parsed);
}
