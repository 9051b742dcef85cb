/**
 * The errors this client throws, all under {@link TurnstoreError}, and the
 * one place that maps a gRPC status to them.
 *
 * The daemon's reason (trailing metadata `turnstore-error`) decides the class
 * when it is known; otherwise the status code does. Errors raised before
 * anything is sent (a bad argument, an unencodable event) have no `code`.
 */
import * as util from "node:util";

import { status } from "@grpc/grpc-js";
import type { Metadata, ServiceError } from "@grpc/grpc-js";

/** The trailing metadata key holding the daemon's stable reason string. */
export const ERROR_METADATA_KEY = "turnstore-error";
/** The trailing metadata key holding a key's version after a version conflict. */
export const CURRENT_VERSION_METADATA_KEY = "turnstore-current-version";

/** Base class of every error the client throws. */
export class TurnstoreError extends Error {
  /** The gRPC status code, when the error came from the daemon. */
  readonly code: status | undefined;
  /** The daemon's reason (`turn_finished`, ...), when it sent one. */
  readonly reason: string | undefined;

  constructor(message: string, options: { code?: status; reason?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = options.code;
    this.reason = options.reason;
  }
}

/** The request was malformed or over a limit; the message names which. */
export class InvalidArgumentError extends TurnstoreError {}
/** The request conflicts with the stored state. */
export class FailedPreconditionError extends TurnstoreError {}
/** An append targeted a turn that is already finished; nothing was stored. */
export class TurnFinishedError extends FailedPreconditionError {}
/** A turn was finished a second time. */
export class TurnAlreadyFinishedError extends FailedPreconditionError {}
/** An event id is already stored in another turn of the thread. */
export class EventIdConflictError extends FailedPreconditionError {}

/**
 * A save expected another version, or a conditional append another next
 * position of its thread; nothing was saved or appended. `currentVersion` is
 * the key's version at the time (0: none stored), or the thread's next
 * position, undefined if not reported.
 */
export class VersionConflictError extends FailedPreconditionError {
  currentVersion: number | undefined;
}

/** The thread was cleared while a streaming read of it was in progress. */
export class ThreadClearedError extends TurnstoreError {}
/**
 * A replay cursor lies past the end of its thread: `after` is at or past the
 * thread's next position, so it was never handed out for this thread (another
 * daemon's database, or one since restored from a backup). Resuming from it
 * would skip events: replay from the start, or from the last position
 * actually received from this thread.
 */
export class CursorOutOfRangeError extends TurnstoreError {}
/** A size limit was hit (a message too large for the channel, for example). */
export class ResourceExhaustedError extends TurnstoreError {}
/** The daemon's database reached its size ceiling; nothing was written. */
export class StorageFullError extends ResourceExhaustedError {}
/**
 * The daemon ended a live replay that read too slowly for its follower
 * budget. Nothing is lost: replay again after the last position received.
 */
export class FollowerTooSlowError extends ResourceExhaustedError {}
/**
 * The daemon could not be reached or is shutting down. A write that failed
 * this way may still have been committed; appends are idempotent by event
 * id, so retrying them is safe.
 */
export class UnavailableError extends TurnstoreError {}
/**
 * The daemon refused the call's bearer token (missing or wrong): pass the
 * daemon's token as the client's `token` option. Never retried.
 */
export class UnauthenticatedError extends TurnstoreError {}
/**
 * The bearer token's scope does not allow the call (a write outside its
 * thread ids or keys, any write with a read-only token, a daemon-wide call
 * with a token that is not full-scope); nothing was written. Never retried.
 */
export class PermissionDeniedError extends TurnstoreError {}
/** The call did not complete before its deadline; it may still take effect. */
export class DeadlineExceededError extends TurnstoreError {}
/** Any other failure reported by the daemon. */
export class ServerError extends TurnstoreError {}
/** An event cannot be encoded, or a stored one cannot be decoded as JSON. */
export class EventFormatError extends TurnstoreError {}
/** A conversation snapshot is not a valid version-1 snapshot. */
export class SnapshotFormatError extends TurnstoreError {}

type ErrorClass = new (
  message: string,
  options: { code?: status; reason?: string; cause?: unknown },
) => TurnstoreError;

/**
 * Every reason the daemon sends (the proto's ErrorReason; the daemon's status table is
 * server/turnstore/server/api/errors.py), with the class it stands for.
 */
const BY_REASON: ReadonlyMap<string, ErrorClass> = new Map<string, ErrorClass>([
  ["internal", ServerError],
  ["invalid_argument", InvalidArgumentError],
  ["turn_finished", TurnFinishedError],
  ["turn_already_finished", TurnAlreadyFinishedError],
  ["event_id_conflict", EventIdConflictError],
  ["version_conflict", VersionConflictError],
  ["thread_cleared", ThreadClearedError],
  ["storage_full", StorageFullError],
  ["follower_too_slow", FollowerTooSlowError],
  ["shutting_down", UnavailableError],
  ["database_unavailable", UnavailableError],
  ["disk_error", UnavailableError],
  ["data_dir_locked", UnavailableError],
  ["backup_failed", FailedPreconditionError],
  ["unauthenticated", UnauthenticatedError],
  ["cursor_out_of_range", CursorOutOfRangeError],
  ["permission_denied", PermissionDeniedError],
]);

/** The reasons this client knows, each mapped to its own class (for tests and diagnostics). */
export const KNOWN_REASONS: readonly string[] = [...BY_REASON.keys()];

const BY_CODE: ReadonlyMap<status, ErrorClass> = new Map<status, ErrorClass>([
  [status.INVALID_ARGUMENT, InvalidArgumentError],
  [status.FAILED_PRECONDITION, FailedPreconditionError],
  [status.RESOURCE_EXHAUSTED, ResourceExhaustedError],
  [status.UNAVAILABLE, UnavailableError],
  [status.DEADLINE_EXCEEDED, DeadlineExceededError],
  [status.UNAUTHENTICATED, UnauthenticatedError],
  [status.OUT_OF_RANGE, CursorOutOfRangeError],
  [status.PERMISSION_DENIED, PermissionDeniedError],
  // The daemon cancels calls only when it shuts down; a stream this client
  // cancels itself ends quietly instead (see Replay).
  [status.CANCELLED, UnavailableError],
]);

function isServiceError(error: unknown): error is ServiceError {
  return (
    error instanceof Error &&
    typeof (error as Partial<ServiceError>).code === "number" &&
    typeof (error as Partial<ServiceError>).metadata?.get === "function"
  );
}

function firstString(metadata: Metadata, key: string): string | undefined {
  const [value] = metadata.get(key);
  return value === undefined ? undefined : value.toString();
}

/**
 * The TurnstoreError for a status the daemon reported: by `reason` first
 * (the `turnstore-error` trailer, or an AppendStream item's reason), then by
 * `code`, else ServerError. An empty `message` becomes the code's name.
 */
export function errorFromStatus(
  code: status,
  reason: string | undefined,
  message: string,
  cause?: unknown,
): TurnstoreError {
  const known = reason === undefined || reason === "" ? undefined : reason;
  const cls =
    (known !== undefined ? BY_REASON.get(known) : undefined) ?? BY_CODE.get(code) ?? ServerError;
  return new cls(message || status[code] || "error", {
    code,
    ...(known !== undefined && { reason: known }),
    ...(cause !== undefined && { cause }),
  });
}

/**
 * The TurnstoreError for anything a call threw.
 *
 * A gRPC ServiceError is mapped by {@link errorFromStatus}, keeping the
 * original error as `cause` (and a version conflict's current version). A
 * TurnstoreError is returned as it is; anything else is wrapped in a
 * ServerError.
 */
export function toTurnstoreError(error: unknown): TurnstoreError {
  if (error instanceof TurnstoreError) {
    return error;
  }
  if (!isServiceError(error)) {
    return new ServerError(String(error), { cause: error });
  }
  const reason = firstString(error.metadata, ERROR_METADATA_KEY);
  const details =
    error.code === status.UNAVAILABLE && reason === undefined
      ? transportMessage(error.details)
      : error.details;
  const mapped = errorFromStatus(error.code, reason, details, error);
  if (mapped instanceof VersionConflictError) {
    const current = firstString(error.metadata, CURRENT_VERSION_METADATA_KEY);
    if (current !== undefined && /^\d+$/.test(current)) {
      mapped.currentVersion = Number(current);
    }
  }
  return mapped;
}

/** grpc-js's words for a channel that found no daemon, and node's error after them. */
const CONNECT_FAILED =
  /^No connection established\. Last error: (?:Error: )?(.*?)\.?(?: Resolution note: .*)?$/s;
/** Node's connect error: `connect ECONNREFUSED 127.0.0.1:7070`. */
const CONNECT_ERROR = /^connect (E[A-Z]+) (.+)$/;

/**
 * `cannot reach ADDRESS: CAUSE (ECODE)` for grpc-js's connect failure (the
 * OS error spelled out, e.g. "connection refused"); else `details` as they are.
 */
function transportMessage(details: string): string {
  const failed = CONNECT_FAILED.exec(details);
  if (failed === null) {
    return details;
  }
  const cause = failed[1] ?? "";
  const connect = CONNECT_ERROR.exec(cause);
  if (connect === null) {
    return `cannot reach the daemon: ${cause}`;
  }
  const [, code = "", address = ""] = connect;
  const known = [...util.getSystemErrorMap().values()].find(([name]) => name === code);
  return `cannot reach ${address}: ${known === undefined ? code : `${known[1]} (${code})`}`;
}
