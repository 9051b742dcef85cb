/**
 * The history calls over many conversation keys: a ranged key listing
 * (`client.listKeys`) and an atomic batch of saves and deletes
 * (`client.batch`, with {@link batchSave}, {@link batchDelete} and
 * {@link batchDeletePrefix}).
 */
import type { Calls } from "./calls";
import { toTurnstoreError } from "./errors";
import type { TurnstoreError } from "./errors";
import { JSON_CONTENT_TYPE } from "./envelope";
import { checkU64, fromNanos, fromU64 } from "./numbers";
import type { BatchResponse, HistoryStoreServiceClient, ListKeysResponse } from "./proto";

/** A conversation key holding a snapshot, as `listKeys` lists it. */
export interface KeyInfo {
  key: string;
  /** The version a load returns now. */
  version: number;
  /** When the key was last saved or deleted (nanoseconds since the Unix epoch). */
  lastWriteUnixNanos: bigint;
}

/** What `listKeys` lists; every field is optional. */
export interface ListKeysOptions {
  /** Only keys starting with it. */
  prefix?: string;
  /** Continue after this key, in the listing's direction (newestFirst: the keys before it). */
  startAfter?: string;
  /** Only keys sorting before it (exclusive), whatever the direction. */
  endBefore?: string;
  /** At most this many keys (0 or absent: all). */
  limit?: number;
  /** Descending byte order: `{prefix, limit: 1, newestFirst: true}` is the greatest key under a prefix. */
  newestFirst?: boolean;
}

/** One operation of a batch: build it with batchSave, batchDelete or batchDeletePrefix. */
export type BatchOperation =
  | {
      kind: "save";
      key: string;
      data: Uint8Array;
      contentType: string;
      expectedVersion?: number;
    }
  | { kind: "delete"; key: string; expectedVersion?: number }
  | { kind: "deletePrefix"; prefix: string };

/** One operation's outcome, at the operation's index. */
export interface BatchResult {
  /** The version a save got (0 for deletes). */
  version: number;
  /** The snapshot versions a delete or delete-prefix removed. */
  removedVersions: number;
  /** The keys it deleted (a delete: 1 if the key held a snapshot, else 0). */
  removedKeys: number;
}

/**
 * A save in a batch: `data` under `key` with `contentType` (default
 * application/json, which must be strict JSON), only if the key is at
 * `expectedVersion` (0: nothing stored) when given.
 */
export function batchSave(
  key: string,
  data: Uint8Array,
  options: { contentType?: string; expectedVersion?: number } = {},
): BatchOperation {
  if (!(data instanceof Uint8Array)) {
    throw new TypeError("data must be a Uint8Array (or a Buffer)");
  }
  return {
    kind: "save",
    key,
    data,
    contentType: options.contentType ?? JSON_CONTENT_TYPE,
    ...(options.expectedVersion !== undefined && {
      expectedVersion: checkU64(options.expectedVersion, "expectedVersion"),
    }),
  };
}

/** A delete of every kept version of `key` in a batch, only if at `expectedVersion` when given. */
export function batchDelete(
  key: string,
  options: { expectedVersion?: number } = {},
): BatchOperation {
  return {
    kind: "delete",
    key,
    ...(options.expectedVersion !== undefined && {
      expectedVersion: checkU64(options.expectedVersion, "expectedVersion"),
    }),
  };
}

/** A delete of every key starting with `prefix` (not empty) in a batch. */
export function batchDeletePrefix(prefix: string): BatchOperation {
  return { kind: "deletePrefix", prefix };
}

function toWire(operation: BatchOperation): object {
  switch (operation.kind) {
    case "save":
      return {
        save: {
          key: operation.key,
          data: Buffer.from(
            operation.data.buffer,
            operation.data.byteOffset,
            operation.data.byteLength,
          ),
          content_type: operation.contentType,
          ...(operation.expectedVersion !== undefined && {
            expected_version: operation.expectedVersion,
          }),
        },
      };
    case "delete":
      return {
        delete: {
          key: operation.key,
          ...(operation.expectedVersion !== undefined && {
            expected_version: operation.expectedVersion,
          }),
        },
      };
    case "deletePrefix":
      return { delete_prefix: { prefix: operation.prefix } };
    default:
      throw new TypeError(
        "a batch operation must come from batchSave, batchDelete or batchDeletePrefix",
      );
  }
}

/** @internal client.batch: one call, retried only when every operation is an unconditional delete. */
export async function applyBatch(
  stub: HistoryStoreServiceClient,
  calls: Calls,
  operations: readonly BatchOperation[],
): Promise<BatchResult[]> {
  const request = { operations: operations.map(toWire) };
  const retry = operations.every(
    (op) =>
      op.kind === "deletePrefix" || (op.kind === "delete" && op.expectedVersion === undefined),
  );
  const response = await calls.unary<BatchResponse>(
    (options, done) => stub.Batch(request, options, done),
    { retry },
  );
  return response.results.map((result) => ({
    version: fromU64(result.version, "version"),
    removedVersions: fromU64(result.removed_versions, "removed_versions"),
    removedKeys: fromU64(result.removed_keys, "removed_keys"),
  }));
}

/** @internal client.listKeys: the keys as they stream in; retried only before the first. */
export async function* listKeys(
  stub: HistoryStoreServiceClient,
  calls: Calls,
  options: ListKeysOptions,
): AsyncGenerator<KeyInfo, void, undefined> {
  const request = {
    prefix: options.prefix ?? "",
    start_after: options.startAfter ?? "",
    end_before: options.endBefore ?? "",
    limit: checkU64(options.limit ?? 0, "limit"),
    newest_first: options.newestFirst === true,
  };
  let yielded = false;
  for (let attempt = 1; ; attempt += 1) {
    calls.checkOpen();
    const call = stub.ListKeys(request, calls.options());
    call.on("error", () => {}); // the status after a cancel
    let failure: TurnstoreError;
    try {
      for await (const message of call as AsyncIterable<ListKeysResponse>) {
        for (const key of message.keys) {
          yielded = true;
          yield {
            key: key.key,
            version: fromU64(key.version, "version"),
            lastWriteUnixNanos: fromNanos(key.last_write_unix_nanos),
          };
        }
      }
      return;
    } catch (error) {
      failure = toTurnstoreError(error);
    } finally {
      call.cancel();
    }
    if (yielded || !calls.mayRetry(failure, attempt)) {
      throw failure;
    }
    await calls.pause(attempt, failure);
  }
}
