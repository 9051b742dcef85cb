/** The HistoryStore contract over HistoryStoreService, for one conversation key. */
import type { Calls } from "./calls";
import { SnapshotFormatError } from "./errors";
import { JSON_CONTENT_TYPE } from "./envelope";
import { checkU64, fromNanos, fromU64 } from "./numbers";
import type {
  DeleteResponse,
  HistoryStoreServiceClient,
  ListVersionsResponse,
  LoadResponse,
  SaveResponse,
} from "./proto";
import { decodeSnapshot, encodeSnapshot } from "./snapshot";
import type { ConversationSnapshot } from "./snapshot";

/** A loaded snapshot with its version (pass it as `expectedVersion` to save). */
export interface VersionedSnapshot {
  snapshot: ConversationSnapshot;
  version: number;
  savedAtUnixNanos: bigint;
}

/** A snapshot as stored, its data as bytes (see `loadBytes`). */
export interface Blob {
  /** Exactly what was saved. */
  data: Uint8Array;
  contentType: string;
  version: number;
  savedAtUnixNanos: bigint;
}

/** One kept version of a key, without its data (see `listVersions`). */
export interface SnapshotVersionInfo {
  version: number;
  savedAtUnixNanos: bigint;
  /** The size of its data in bytes. */
  sizeBytes: number;
  /** The encoding of its data (application/json for what this client saves). */
  contentType: string;
}

/**
 * Whole-conversation snapshots under one key; obtain it as
 * `client.history(key)`. Snapshots are stored as their JSON text with
 * content type application/json. (The same name, `TurnstoreHistoryStore`,
 * in the Python and Rust clients.)
 */
export class TurnstoreHistoryStore {
  readonly key: string;
  readonly #stub: HistoryStoreServiceClient;
  readonly #calls: Calls;

  /** @internal Use TurnstoreClient.history. */
  constructor(stub: HistoryStoreServiceClient, key: string, calls: Calls) {
    this.#stub = stub;
    this.key = key;
    this.#calls = calls;
  }

  /**
   * Stores `snapshot` as a full overwrite, durably, and resolves with its
   * version (1 for the first save of the key, then one more per save).
   *
   * With `expectedVersion` (the version last loaded, 0 for "nothing
   * stored"), it saves only if the key is still at that version, else rejects
   * with VersionConflictError (its `currentVersion` says the key's version)
   * and changes nothing. Rejects with SnapshotFormatError, before any call,
   * for an invalid snapshot; InvalidArgumentError for an empty key or one
   * over the daemon's limits.
   *
   * Retried after UnavailableError like every call, except with
   * `expectedVersion`: its first attempt may have saved, and a retry would
   * then report a VersionConflictError for the caller's own save. Without
   * it, a retry whose first attempt saved stores the snapshot once more
   * (the same data under the next version).
   */
  async save(
    snapshot: ConversationSnapshot,
    options: { expectedVersion?: number } = {},
  ): Promise<number> {
    return this.saveBytes(encodeSnapshot(snapshot), JSON_CONTENT_TYPE, options);
  }

  /**
   * The latest snapshot, or undefined when nothing was ever saved under the
   * key (or it was deleted). Rejects with SnapshotFormatError when the stored
   * data is not a valid version-1 JSON snapshot.
   */
  async load(): Promise<ConversationSnapshot | undefined> {
    return (await this.loadVersioned())?.snapshot;
  }

  /**
   * The latest snapshot (or the kept `version`) with its version; undefined
   * when nothing is stored, the key was deleted, or that version is no longer
   * kept. Rejects as {@link load}.
   */
  async loadVersioned(version?: number): Promise<VersionedSnapshot | undefined> {
    const blob = await this.loadBytes(version);
    if (blob === undefined) {
      return undefined;
    }
    if (blob.contentType !== JSON_CONTENT_TYPE) {
      throw new SnapshotFormatError(`snapshot of ${this.key} is ${blob.contentType}, not JSON`);
    }
    return {
      snapshot: decodeSnapshot(
        Buffer.from(blob.data.buffer, blob.data.byteOffset, blob.data.byteLength),
      ),
      version: blob.version,
      savedAtUnixNanos: blob.savedAtUnixNanos,
    };
  }

  /**
   * Stores `data` (any bytes) as the key's next version with `contentType`
   * (say "application/octet-stream"; at most 128 bytes, no NUL) and resolves
   * with the version. Other types are stored as opaque bytes; data labelled
   * "application/json" (or "") must still be strict JSON, else
   * InvalidArgumentError. `expectedVersion` and retries as for {@link save}.
   */
  async saveBytes(
    data: Uint8Array,
    contentType: string,
    options: { expectedVersion?: number } = {},
  ): Promise<number> {
    if (!(data instanceof Uint8Array)) {
      throw new TypeError("data must be a Uint8Array (or a Buffer)");
    }
    const request = {
      key: this.key,
      data: Buffer.from(data.buffer, data.byteOffset, data.byteLength),
      content_type: contentType,
      ...(options.expectedVersion !== undefined && {
        expected_version: checkU64(options.expectedVersion, "expectedVersion"),
      }),
    };
    const response = await this.#calls.unary<SaveResponse>(
      (callOptions, done) => this.#stub.Save(request, callOptions, done),
      { retry: options.expectedVersion === undefined },
    );
    return fromU64(response.version, "version");
  }

  /**
   * The latest snapshot (or the kept `version`) as stored: its bytes and
   * content type, whatever they are (a JSON snapshot comes back as its
   * text); undefined when nothing is stored, the key was deleted, or that
   * version is no longer kept. Never rejects for what is stored.
   */
  async loadBytes(version?: number): Promise<Blob | undefined> {
    const request = {
      key: this.key,
      ...(version !== undefined && { version: checkU64(version, "version") }),
    };
    const response = await this.#calls.unary<LoadResponse>((options, done) =>
      this.#stub.Load(request, options, done),
    );
    const stored = response.snapshot;
    if (!response.found || stored === null) {
      return undefined;
    }
    return {
      data: new Uint8Array(stored.data),
      contentType: stored.content_type === "" ? JSON_CONTENT_TYPE : stored.content_type,
      version: fromU64(stored.version, "version"),
      savedAtUnixNanos: fromNanos(stored.saved_at_unix_nanos),
    };
  }

  /**
   * The kept versions of the key, newest first; empty for an unknown or
   * deleted key. Each can be loaded with {@link loadVersioned}.
   */
  async listVersions(): Promise<SnapshotVersionInfo[]> {
    const response = await this.#calls.unary<ListVersionsResponse>((options, done) =>
      this.#stub.ListVersions({ key: this.key }, options, done),
    );
    return response.versions.map((kept) => ({
      version: fromU64(kept.version, "version"),
      savedAtUnixNanos: fromNanos(kept.saved_at_unix_nanos),
      sizeBytes: fromU64(kept.size_bytes, "size_bytes"),
      contentType: kept.content_type,
    }));
  }

  /**
   * Deletes every kept version of the key; resolves with how many (0 for an
   * unknown key). Versions do not restart: the next save gets a higher one.
   * A retried delete whose first attempt committed resolves with 0.
   */
  async delete(): Promise<number> {
    const response = await this.#calls.unary<DeleteResponse>((options, done) =>
      this.#stub.Delete({ key: this.key }, options, done),
    );
    return fromU64(response.removed_versions, "removed_versions");
  }
}
