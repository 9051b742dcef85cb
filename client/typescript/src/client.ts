/** TurnstoreClient: one channel to a daemon, with its event and history stores. */
import * as fs from "node:fs";

import * as grpc from "@grpc/grpc-js";

import { SharedAppendStream } from "./appendstream";
import { Calls, checkRetry } from "./calls";
import type { RetryPolicy } from "./calls";
import { InvalidArgumentError, UnavailableError } from "./errors";
import { EventStore } from "./events";
import type { WriteMode } from "./events";
import { HistoryStore } from "./history";
import { fromU64 } from "./numbers";
import { loadTurnstoreV1 } from "./proto";
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

/** The daemon's current counters (AdminService.GetStats). */
export interface DaemonStats {
  /** Replays currently following a thread (waiting for commits). */
  liveFollowers: number;
  /** Replays currently open, following or catching up. */
  openReplays: number;
  /** The LMDB map size in bytes. */
  mapSizeBytes: number;
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
  readonly events: EventStore;
  readonly #history: HistoryStoreServiceClient;
  readonly #admin: AdminServiceClient;
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
    this.events = new EventStore(events, this.#calls, this.#writes);
    const shared = { channelOverride: events.getChannel(), interceptors };
    this.#history = new v1.HistoryStoreService(target, credentials, shared);
    this.#admin = new v1.AdminService(target, credentials, shared);
  }

  /**
   * A store of the snapshots saved under the conversation `key`. No call is
   * made; an empty or oversized key is refused by the daemon on first use
   * (InvalidArgumentError).
   */
  history(key: string): HistoryStore {
    return new HistoryStore(this.#history, key, this.#calls);
  }

  /** The daemon's current counters. */
  async stats(): Promise<DaemonStats> {
    const response = await this.#calls.unary<GetStatsResponse>((options, done) =>
      this.#admin.GetStats({}, options, done),
    );
    return {
      liveFollowers: fromU64(response.live_followers, "live_followers"),
      openReplays: fromU64(response.open_replays, "open_replays"),
      mapSizeBytes: fromU64(response.map_size_bytes, "map_size_bytes"),
    };
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
