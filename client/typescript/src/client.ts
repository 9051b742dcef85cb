/** TurnstoreClient: one channel to a daemon, with its event and history stores. */
import * as fs from "node:fs";

import * as grpc from "@grpc/grpc-js";

import { SharedAppendStream } from "./appendstream";
import { Calls, checkRetry } from "./calls";
import type { RetryPolicy } from "./calls";
import { InvalidArgumentError, UnavailableError } from "./errors";
import { TurnstoreEventStore } from "./events";
import type { WriteMode } from "./events";
import { TurnstoreHistoryStore } from "./history";
import { fromU64 } from "./numbers";
import { loadTurnstoreV1 } from "./proto";
import { applyBatch, listKeys } from "./keys";
import type { BatchOperation, BatchResult, KeyInfo, ListKeysOptions } from "./keys";
import type { AdminServiceClient, GetStatsResponse, HistoryStoreServiceClient } from "./proto";

/** The daemon's default address (`make run`). */
export const DEFAULT_TARGET = "127.0.0.1:7070";

/** Matches the daemon's limit, so large turns and snapshots come through. */
const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/** Every call's deadline when `timeoutMs` is not given, as in the Python and Rust clients. */
export const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * HTTP/2 keepalive pings, while idle too: a daemon that stops answering (a
 * frozen process, a dropped network path) fails the open streams with
 * UnavailableError instead of leaving them waiting forever. The daemon
 * allows pings down to every 10 s. Override them with `channelOptions`.
 */
export const KEEPALIVE_CHANNEL_OPTIONS: Readonly<grpc.ChannelOptions> = Object.freeze({
  "grpc.keepalive_time_ms": 20_000,
  "grpc.keepalive_timeout_ms": 10_000,
  "grpc.keepalive_permit_without_calls": 1,
});

/**
 * The daemon's counters and what its database holds (AdminService.GetStats;
 * the proto documents each field). The fields of the Python client's
 * `DaemonStats`, in camelCase.
 */
export interface DaemonStats {
  /** Replays currently following a thread (waiting for commits). */
  liveFollowers: number;
  /** Replays currently open, following or catching up. */
  openReplays: number;
  /** The LMDB map size in bytes (0 on PostgreSQL). */
  mapSizeBytes: number;
  /** Threads stored. */
  threads: number;
  /** Events stored. */
  events: number;
  /** Turns stored. */
  turns: number;
  /** Finished turns stored. */
  finishedTurns: number;
  /** Conversation keys holding a snapshot. */
  conversations: number;
  /** Snapshot versions kept. */
  snapshotVersions: number;
  /** The size of the database on disk in bytes. */
  dataFileBytes: number;
  /** Whether a retention age is configured. */
  retentionEnabled: boolean;
  /** Retention sweeps run since the daemon started. */
  retentionSweeps: number;
  /** Threads removed by retention. */
  retentionRemovedThreads: number;
  /** Events removed by retention. */
  retentionRemovedEvents: number;
  /** Conversations removed by retention. */
  retentionRemovedConversations: number;
  /** The last retention sweep's error; empty when it succeeded. */
  retentionLastError: string;
  /** Bytes replays reserve or hold in messages not yet taken by their readers. */
  followerHeldBytes: number;
  /** Bytes of replays ended as too slow that gRPC still keeps. */
  followerEndingBytes: number;
  /** Followers ended with follower_too_slow so far. */
  followersEndedTooSlow: number;
  /** Bytes of database pages in use. */
  usedBytes: number;
  /** The database's size ceiling in bytes (0: none). */
  maxDbBytes: number;
  /** Where writes that add data stop with storage_full (0: no limit, e.g. PostgreSQL). */
  writeLimitBytes: number;
}

function statsFromWire(response: GetStatsResponse): DaemonStats {
  return {
    liveFollowers: fromU64(response.live_followers, "live_followers"),
    openReplays: fromU64(response.open_replays, "open_replays"),
    mapSizeBytes: fromU64(response.map_size_bytes, "map_size_bytes"),
    threads: fromU64(response.threads, "threads"),
    events: fromU64(response.events, "events"),
    turns: fromU64(response.turns, "turns"),
    finishedTurns: fromU64(response.finished_turns, "finished_turns"),
    conversations: fromU64(response.conversations, "conversations"),
    snapshotVersions: fromU64(response.snapshot_versions, "snapshot_versions"),
    dataFileBytes: fromU64(response.data_file_bytes, "data_file_bytes"),
    retentionEnabled: response.retention_enabled,
    retentionSweeps: fromU64(response.retention_sweeps, "retention_sweeps"),
    retentionRemovedThreads: fromU64(
      response.retention_removed_threads,
      "retention_removed_threads",
    ),
    retentionRemovedEvents: fromU64(response.retention_removed_events, "retention_removed_events"),
    retentionRemovedConversations: fromU64(
      response.retention_removed_conversations,
      "retention_removed_conversations",
    ),
    retentionLastError: response.retention_last_error,
    followerHeldBytes: fromU64(response.follower_held_bytes, "follower_held_bytes"),
    followerEndingBytes: fromU64(response.follower_ending_bytes, "follower_ending_bytes"),
    followersEndedTooSlow: fromU64(response.followers_ended_too_slow, "followers_ended_too_slow"),
    usedBytes: fromU64(response.used_bytes, "used_bytes"),
    maxDbBytes: fromU64(response.max_db_bytes, "max_db_bytes"),
    writeLimitBytes: fromU64(response.write_limit_bytes, "write_limit_bytes"),
  };
}

/**
 * Administrative calls over a client's channel; obtain it as `client.admin`
 * (`client.admin` in Python, `client.admin()` in Rust). It shares the
 * client's deadline and retry policy.
 */
export class TurnstoreAdmin {
  readonly #stub: AdminServiceClient;
  readonly #calls: Calls;

  /** @internal Use TurnstoreClient.admin. */
  constructor(stub: AdminServiceClient, calls: Calls) {
    this.#stub = stub;
    this.#calls = calls;
  }

  /** The daemon's counters and what its database holds; retried like every unary call. */
  async stats(): Promise<DaemonStats> {
    const response = await this.#calls.unary<GetStatsResponse>((options, done) =>
      this.#stub.GetStats({}, options, done),
    );
    return statsFromWire(response);
  }
}

/** A PEM file's path, or the PEM data itself. */
export type PemSource = string | Buffer;

/**
 * TLS for a TCP target: the CA that signed the daemon's certificate and,
 * for mutual TLS (a daemon run with --tls-client-ca), this client's
 * certificate chain and its key. Each is a PEM file's path or the PEM data
 * as a Buffer. `serverName` overrides the name checked against the daemon's
 * certificate (default: the target's host).
 */
export interface ClientTls {
  ca: PemSource;
  cert?: PemSource | undefined;
  key?: PemSource | undefined;
  serverName?: string | undefined;
}

/** How a client connects and how long its calls may take. */
export interface TurnstoreClientOptions {
  /**
   * Deadline of each attempt of a unary call, of each write over the
   * shared append stream (from the call until its ack, retries included; the
   * stream stays open for the others), of each attempt of a whole ListTurns
   * read, and of a replay that does not follow, in milliseconds (default
   * {@link DEFAULT_TIMEOUT_MS}, 30 000); undefined for none. Past it a call
   * rejects with DeadlineExceededError (a write may still take effect). A
   * following replay has no deadline unless given one: the channel's
   * keepalive pings ({@link KEEPALIVE_CHANNEL_OPTIONS}: every 20 s, 10 s to
   * answer) end it with UnavailableError when the daemon stops answering.
   */
  timeoutMs?: number | undefined;
  /**
   * Allow a target that is not a loopback address or a Unix socket over an
   * insecure channel: only for a daemon run with --allow-remote on a network
   * you trust. Not needed with `tls`.
   */
  allowRemote?: boolean;
  /**
   * The daemon's bearer token (its --auth-token-file), sent as
   * `authorization: Bearer <token>` on every call and stream. Without it, a
   * daemon that requires one refuses every call with UnauthenticatedError.
   */
  token?: string | undefined;
  /** TLS (and mutual TLS) to a `HOST:PORT` target; see {@link ClientTls}. */
  tls?: ClientTls | undefined;
  /**
   * How calls that fail with UnavailableError are retried (default: 6
   * attempts, pauses from 100 ms doubling to 2 000 ms plus up to 50%
   * jitter; `{ attempts: 1 }` never retries). Every unary call is retried,
   * except a save with an expected version; a read (listTurns, replay) only
   * until it has yielded something; a write over the shared stream is sent
   * on at most `attempts` streams. A retried finish that finds its turn
   * finished succeeds (its first attempt did it).
   */
  retry?: Partial<RetryPolicy> | undefined;
  /** The directory holding turnstore/v1/turnstore.proto (default: the repository's proto/). */
  protoDir?: string;
  /** Extra grpc-js channel options; they override this client's. */
  channelOptions?: grpc.ChannelOptions;
  /**
   * How `events.append` and `events.finishTurn` are sent (default
   * `"stream"`): over one AppendStream shared by every caller of this client,
   * opened on first use and reopened (resending what it had not
   * acknowledged) when it breaks; or, with `"unary"`, one call each.
   */
  writeMode?: WriteMode;
}

function pem(source: PemSource | undefined, name: string): Buffer | null {
  if (source === undefined) {
    return null;
  }
  if (Buffer.isBuffer(source)) {
    if (!source.includes("-----BEGIN")) {
      throw new InvalidArgumentError(`tls.${name}: a Buffer must hold PEM data (-----BEGIN ...)`);
    }
    return source;
  }
  if (typeof source !== "string" || source === "") {
    throw new InvalidArgumentError(`tls.${name}: a PEM file's path or a Buffer of PEM data`);
  }
  try {
    return fs.readFileSync(source);
  } catch (error) {
    throw new InvalidArgumentError(`tls.${name}: cannot read ${source}: ${String(error)}`, {
      cause: error,
    });
  }
}

/**
 * The channel credentials for `tls` (insecure when undefined). Throws
 * InvalidArgumentError for a unix: target, a cert without a key (or the
 * other way round), or a file that cannot be read.
 */
function channelCredentials(target: string, tls: ClientTls | undefined): grpc.ChannelCredentials {
  if (tls === undefined) {
    return grpc.credentials.createInsecure();
  }
  if (target.startsWith("unix:")) {
    throw new InvalidArgumentError("tls needs a HOST:PORT target, not a unix: socket");
  }
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new InvalidArgumentError("tls.cert and tls.key go together (mutual TLS)");
  }
  return grpc.credentials.createSsl(pem(tls.ca, "ca"), pem(tls.key, "key"), pem(tls.cert, "cert"));
}

/**
 * The interceptor adding the bearer token to every call's metadata. Not call
 * credentials: grpc-js refuses to compose those with an insecure channel,
 * and a Unix socket or loopback daemon with a token is a normal setup.
 */
function bearerToken(token: string): grpc.Interceptor {
  // Metadata values must be printable ASCII; refuse at construction, not on
  // the first call. The daemon strips its token file, so no outer spaces.
  if (typeof token !== "string" || !/^[\x20-\x7e]+$/.test(token) || token.trim() !== token) {
    throw new InvalidArgumentError(
      "token must be non-empty printable ASCII, without leading or trailing spaces",
    );
  }
  const value = `Bearer ${token}`;
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set("authorization", value);
        next(metadata, listener);
      },
    });
}

const LOOPBACK_HOST = /^(localhost|127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[::1\])$/i;

/**
 * Throws InvalidArgumentError unless `target` is `unix:PATH` or `HOST:PORT`
 * with a loopback host (127.x.x.x, localhost, [::1]); any `HOST:PORT` is
 * accepted with `allowRemote`.
 */
export function checkTarget(target: string, allowRemote = false): void {
  if (target.startsWith("unix:")) {
    if (target.length === "unix:".length) {
      throw new InvalidArgumentError("a unix: target needs a socket path");
    }
    return;
  }
  const match = /^(.+):(\d+)$/.exec(target);
  if (match === null) {
    throw new InvalidArgumentError(`target ${target} is neither unix:PATH nor HOST:PORT`);
  }
  if (!allowRemote && !LOOPBACK_HOST.test(match[1] ?? "")) {
    throw new InvalidArgumentError(
      `target ${target} is not a loopback address; the channel is insecure (pass allowRemote to use it anyway)`,
    );
  }
}

/**
 * A connection to a turnstore daemon: `client.events` for event streams,
 * `client.history(key)` for a conversation's snapshots. Close it with
 * `close()` once its replays are closed (an open follower keeps the process
 * alive).
 *
 * Connecting is lazy: the constructor never fails for a daemon that is not
 * there yet; calls made meanwhile fail with UnavailableError (writes over the
 * shared stream first retry for a few seconds), and {@link waitForReady}
 * waits for it. The constructor throws
 * InvalidArgumentError for a target refused by {@link checkTarget} (any
 * host is accepted with `tls`), a bad `token`, `tls` or `retry`, and the
 * loader's error when the proto file cannot be read.
 */
export class TurnstoreClient {
  readonly target: string;
  readonly events: TurnstoreEventStore;
  readonly #history: HistoryStoreServiceClient;
  /** Administrative calls: `client.admin.stats()`. */
  readonly admin: TurnstoreAdmin;
  readonly #channelOwner: grpc.Client;
  readonly #calls: Calls;
  readonly #writes: SharedAppendStream | undefined;

  constructor(target: string = DEFAULT_TARGET, options: TurnstoreClientOptions = {}) {
    checkTarget(target, options.allowRemote === true || options.tls !== undefined);
    this.target = target;
    const timeoutMs = "timeoutMs" in options ? options.timeoutMs : DEFAULT_TIMEOUT_MS;
    this.#calls = new Calls(timeoutMs, checkRetry(options.retry));
    const credentials = channelCredentials(target, options.tls);
    const interceptors = options.token === undefined ? [] : [bearerToken(options.token)];
    const v1 = loadTurnstoreV1(options.protoDir);
    const channelOptions: grpc.ChannelOptions = {
      "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
      "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
      // A sidecar restarts in well under a second: reconnect quickly.
      "grpc.initial_reconnect_backoff_ms": 100,
      "grpc.max_reconnect_backoff_ms": 1000,
      "grpc.use_local_subchannel_pool": 1,
      ...KEEPALIVE_CHANNEL_OPTIONS,
      ...(options.tls?.serverName !== undefined && {
        "grpc.ssl_target_name_override": options.tls.serverName,
      }),
      ...options.channelOptions,
    };
    const events = new v1.EventStoreService(target, credentials, {
      ...channelOptions,
      interceptors,
    });
    this.#channelOwner = events;
    const writeMode = options.writeMode ?? "stream";
    if (writeMode !== "stream" && writeMode !== "unary") {
      throw new InvalidArgumentError(
        `writeMode must be "stream" or "unary", not ${String(writeMode)}`,
      );
    }
    const limit: unknown = channelOptions["grpc.max_send_message_length"];
    const maxSend = typeof limit === "number" ? limit : MAX_MESSAGE_BYTES;
    this.#writes =
      writeMode === "stream"
        ? new SharedAppendStream(events, this.#calls, maxSend < 0 ? Infinity : maxSend)
        : undefined;
    this.events = new TurnstoreEventStore(events, this.#calls, this.#writes);
    const shared = { channelOverride: events.getChannel(), interceptors };
    this.#history = new v1.HistoryStoreService(target, credentials, shared);
    this.admin = new TurnstoreAdmin(new v1.AdminService(target, credentials, shared), this.#calls);
  }

  /**
   * A store of the snapshots saved under the conversation `key`. No call is
   * made; an empty or oversized key is refused by the daemon on first use
   * (InvalidArgumentError).
   */
  history(key: string): TurnstoreHistoryStore {
    return new TurnstoreHistoryStore(this.#history, key, this.#calls);
  }

  /**
   * The conversation keys holding a snapshot, in byte order of their UTF-8
   * form (descending with `newestFirst`), narrowed by `prefix` and
   * `endBefore`, at most `limit`. `{ prefix, limit: 1, newestFirst: true }`
   * is the greatest key under a prefix, read in O(1); deleted keys are never
   * listed and cost nothing to skip. Leaving the loop early cancels the call.
   */
  listKeys(options: ListKeysOptions = {}): AsyncGenerator<KeyInfo, void, undefined> {
    return listKeys(this.#history, this.#calls, options);
  }

  /**
   * Applies saves and deletes across keys (built with batchSave, batchDelete,
   * batchDeletePrefix), in order, all or nothing, in one durable commit;
   * resolves with one result per operation. One refused operation
   * (VersionConflictError, InvalidArgumentError, PermissionDeniedError, the
   * message naming its index) refuses the whole batch. Retried after
   * UnavailableError only when every operation is an unconditional delete.
   */
  batch(operations: readonly BatchOperation[]): Promise<BatchResult[]> {
    return applyBatch(this.#history, this.#calls, operations);
  }

  /**
   * Resolves once the channel is connected; rejects with UnavailableError
   * when it is not within `timeoutMs` (default 10 000).
   */
  waitForReady(timeoutMs = 10_000): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#channelOwner.waitForReady(Date.now() + timeoutMs, (error) => {
        if (error) {
          reject(new UnavailableError(`no turnstore daemon at ${this.target}`, { cause: error }));
        } else {
          resolve();
        }
      });
    });
  }

  /** How `events.append` and `events.finishTurn` are sent. */
  get writeMode(): WriteMode {
    return this.#writes === undefined ? "unary" : "stream";
  }

  /** How many shared append streams this client opened so far (0 in "unary" mode). */
  get appendStreamsOpened(): number {
    return this.#writes?.opened ?? 0;
  }

  /**
   * Closes the channel: later calls fail at once, and calls waiting to retry
   * fail with UnavailableError. The shared append stream is half-closed
   * first, so writes already sent are still acknowledged; one that cannot
   * be fails with UnavailableError. Idempotent.
   */
  close(): void {
    this.#calls.close();
    this.#writes?.close();
    this.#channelOwner.close();
  }
}
