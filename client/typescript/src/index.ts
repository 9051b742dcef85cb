/**
 * turnstore's TypeScript client, built from proto/turnstore/v1/turnstore.proto.
 *
 * ```ts
 * const client = new TurnstoreClient("unix:/run/turnstore.sock");
 * await client.events.append("thread-1", 1, newEnvelope({ type: "text_delta", delta: "Hi" }));
 * ```
 */
export {
  TurnstoreAdmin,
  TurnstoreClient,
  DEFAULT_TARGET,
  DEFAULT_TIMEOUT_MS,
  KEEPALIVE_CHANNEL_OPTIONS,
  checkTarget,
} from "./client";
export type { ClientTls, DaemonStats, PemSource, TurnstoreClientOptions } from "./client";
export { DEFAULT_RETRY } from "./calls";
export type { RetryEvent, RetryPolicy } from "./calls";
export { TurnstoreEventStore } from "./events";
export type { EventOrder, ReadEventsOptions, ReplayOptions, WriteMode } from "./events";
export { TurnstoreHistoryStore } from "./history";
export type { Blob, SnapshotVersionInfo, VersionedSnapshot } from "./history";
export { batchDelete, batchDeletePrefix, batchSave } from "./keys";
export type { BatchOperation, BatchResult, KeyInfo, ListKeysOptions } from "./keys";
export { Replay } from "./replay";
export type {
  CaughtUpItem,
  EventItem,
  ReplayItem,
  ThreadClearedItem,
  TurnFinishedItem,
} from "./replay";
export { JSON_CONTENT_TYPE, envelopeFromJson, envelopeToJson, newEnvelope } from "./envelope";
export type { AgentEvent, EventEnvelope, StoredEvent, StoredTurn } from "./envelope";
export { SNAPSHOT_VERSION, checkSnapshot } from "./snapshot";
export type { ConversationSnapshot } from "./snapshot";
export {
  CURRENT_VERSION_METADATA_KEY,
  CursorOutOfRangeError,
  DeadlineExceededError,
  ERROR_METADATA_KEY,
  EventFormatError,
  EventIdConflictError,
  FailedPreconditionError,
  FollowerTooSlowError,
  InvalidArgumentError,
  KNOWN_REASONS,
  ResourceExhaustedError,
  PermissionDeniedError,
  ServerError,
  SnapshotFormatError,
  StorageFullError,
  ThreadClearedError,
  TurnAlreadyFinishedError,
  TurnFinishedError,
  TurnstoreError,
  UnauthenticatedError,
  UnavailableError,
  VersionConflictError,
} from "./errors";
