/**
 * The event store's writes over one shared EventStoreService.AppendStream.
 *
 * Every `append` and `finishTurn` of a client becomes one item of the same
 * long-lived bidirectional stream, so concurrent callers share the daemon's
 * group commits and pay one stream message each way instead of a whole
 * unary call. The daemon acknowledges items in the order they were sent,
 * each after its durable commit; an ack echoes the item's `request_id`, or
 * carries 0 for an item it could not decode (then it is the oldest one not
 * yet acknowledged).
 */
import type { ClientDuplexStream } from "@grpc/grpc-js";
import { status } from "@grpc/grpc-js";

import type { Calls } from "./calls";
import {
  DeadlineExceededError,
  TurnAlreadyFinishedError,
  TurnstoreError,
  UnavailableError,
  VersionConflictError,
  errorFromStatus,
  toTurnstoreError,
} from "./errors";
import type {
  AppendStreamRequest,
  AppendStreamResponse,
  EventStoreServiceClient,
  WireEnvelope,
} from "./proto";
import { fromU64 } from "./numbers";

/**
 * An open stream with nothing to acknowledge is ended after this long, so a
 * program that forgets `close()` can still exit; the next write reopens it.
 * Long enough to span an agent's pauses within a turn.
 */
const IDLE_MS = 2_000;

/** Bytes a string field may take on the wire at most: UTF-8 needs up to 3 per UTF-16 unit. */
function stringBound(value: string | undefined): number {
  return 3 * (value?.length ?? 0);
}

/**
 * An upper bound of an item's encoded size: its strings at 3 bytes a unit,
 * its bodies as they are, 32 bytes per event and per item for tags, lengths
 * and numbers (each field's overhead is at most 11 bytes).
 */
function itemSizeBound(threadId: string, events: readonly WireEnvelope[]): number {
  let size = 32 + stringBound(threadId);
  for (const event of events) {
    const body = event.body;
    size +=
      32 +
      stringBound(event.event_id) +
      stringBound(event.timestamp) +
      stringBound(event.type) +
      stringBound(event.content_type) +
      (typeof body === "string" ? stringBound(body) : (body?.length ?? 0));
  }
  return size;
}

/** What an acknowledged item resolves to. */
export interface ItemAck {
  /** The positions of the item's events (empty for a bare finish). */
  positions: string[];
  /**
   * The turn's event count, for a bare finish; undefined when the daemon did
   * not say (one older than the field, or a resent finish that found its
   * turn finished).
   */
  eventCount: string | undefined;
}

/** One caller's item, from submit until its ack, error or deadline. */
interface Pending {
  readonly id: number;
  readonly request: AppendStreamRequest;
  readonly resolve: (ack: ItemAck) => void;
  readonly reject: (error: TurnstoreError) => void;
  timer: NodeJS.Timeout | undefined;
  /** Settled (acknowledged, failed, or past its deadline): never sent again. */
  done: boolean;
  /** Sent on an earlier stream that broke before acknowledging it. */
  resent: boolean;
  /** How many streams it was written to. */
  sends: number;
}

/**
 * The multiplexer: one stream at a time, opened on first use, shared by
 * every caller. Calls that the stream did not acknowledge before it broke
 * with UnavailableError are sent again, in their original order, on the next
 * stream (appends are idempotent by event id), after the client retry
 * policy's pause; one already sent on `retry.attempts` streams fails with
 * that error instead.
 */
export class SharedAppendStream {
  readonly #stub: EventStoreServiceClient;
  readonly #calls: Calls;
  readonly #maxMessageBytes: number;
  /** Items sent on the current stream (or waiting for the next) and not acknowledged, in send order. */
  readonly #unacked = new Map<number, Pending>();
  #stream: ClientDuplexStream<AppendStreamRequest, AppendStreamResponse> | undefined;
  #nextId = 1;
  /** Streams that broke in a row with items waiting, with no ack since: the backoff's exponent. */
  #failures = 0;
  #reopenTimer: NodeJS.Timeout | undefined;
  #idleTimer: NodeJS.Timeout | undefined;
  #closed = false;
  #opened = 0;

  constructor(stub: EventStoreServiceClient, calls: Calls, maxMessageBytes: number) {
    this.#stub = stub;
    this.#calls = calls;
    this.#maxMessageBytes = maxMessageBytes;
  }

  /** How many streams were opened so far (for tests and diagnostics). */
  get opened(): number {
    return this.#opened;
  }

  /**
   * Whether an item surely fits the channel's send limit. One that does not
   * must go as a unary call: over the stream, grpc-js would fail the whole
   * stream (every caller's writes) with RESOURCE_EXHAUSTED instead of it.
   */
  fits(threadId: string, events: readonly WireEnvelope[]): boolean {
    return itemSizeBound(threadId, events) <= this.#maxMessageBytes;
  }

  /**
   * Sends one item and resolves with its ack once the daemon committed it.
   * Rejects with the item's own error when the daemon rejected it (the
   * stream goes on), DeadlineExceededError after the client's timeoutMs
   * (the item may still be committed), UnavailableError when the stream
   * could not be reopened within the retry budget or the client is closed,
   * or the error that ended the stream for good.
   */
  submit(
    threadId: string,
    turn: number,
    events: WireEnvelope[],
    finish: boolean,
    expectedNextPosition?: number,
  ): Promise<ItemAck> {
    if (this.#closed) {
      return Promise.reject(new UnavailableError("the client is closed"));
    }
    return new Promise<ItemAck>((resolve, reject) => {
      const id = this.#nextId++;
      const pending: Pending = {
        id,
        request: {
          request_id: id,
          thread_id: threadId,
          turn,
          events,
          finish_turn: finish,
          ...(expectedNextPosition !== undefined && {
            expected_next_position: expectedNextPosition,
          }),
        },
        resolve,
        reject,
        timer: undefined,
        done: false,
        resent: false,
        sends: 0,
      };
      const timeoutMs = this.#calls.timeoutMs;
      if (timeoutMs !== undefined) {
        pending.timer = setTimeout(() => {
          this.#settle(pending);
          reject(
            new DeadlineExceededError(`deadline of ${timeoutMs} ms exceeded`, {
              code: status.DEADLINE_EXCEEDED,
            }),
          );
        }, timeoutMs);
      }
      this.#unacked.set(id, pending);
      this.#clearIdle();
      if (this.#stream !== undefined) {
        pending.sends += 1;
        this.#stream.write(pending.request);
      } else if (this.#reopenTimer === undefined) {
        this.#open();
      } // else: sent when the stream is reopened
    });
  }

  /**
   * Half-closes the stream: the daemon acknowledges what it received, then
   * ends it. Later submits fail at once; calls still waiting fail with
   * UnavailableError if the stream breaks before their ack. Idempotent.
   */
  close(): void {
    this.#closed = true;
    this.#clearIdle();
    if (this.#reopenTimer !== undefined) {
      clearTimeout(this.#reopenTimer);
      this.#reopenTimer = undefined;
      this.#failAll(new UnavailableError("the client was closed before the stream was reopened"));
    }
    this.#stream?.end();
  }

  #open(): void {
    this.#reopenTimer = undefined;
    const waiting = [...this.#unacked.values()].filter((pending) => !pending.done);
    this.#unacked.clear();
    if (waiting.length === 0 || this.#closed) {
      return; // every caller gave up meanwhile; open on the next write
    }
    const stream = this.#stub.AppendStream();
    this.#stream = stream;
    this.#opened += 1;
    stream.on("data", (ack: AppendStreamResponse) => this.#acknowledge(ack));
    stream.on("error", (error: unknown) => this.#broken(stream, toTurnstoreError(error)));
    stream.on("end", () => this.#broken(stream, undefined));
    for (const pending of waiting) {
      this.#unacked.set(pending.id, pending);
      pending.sends += 1;
      stream.write(pending.request);
    }
  }

  #acknowledge(ack: AppendStreamResponse): void {
    this.#failures = 0;
    const id = Number(ack.request_id);
    const pending = id === 0 ? this.#unacked.values().next().value : this.#unacked.get(id);
    if (pending === undefined) {
      return; // not ours (cannot happen with an honest daemon)
    }
    this.#unacked.delete(pending.id);
    if (this.#unacked.size === 0) {
      this.#startIdle();
    }
    if (pending.done) {
      return; // its caller stopped waiting (deadline)
    }
    this.#settle(pending);
    if (ack.error === null) {
      pending.resolve({ positions: ack.positions, eventCount: ack.event_count });
      return;
    }
    // The ItemError stands where a unary call's ServiceError would: as the cause.
    const error = errorFromStatus(ack.error.code, ack.error.reason, ack.error.message, ack.error);
    if (error instanceof VersionConflictError && ack.error.current_version != null) {
      // A conditional append's conflict: the thread's next position.
      error.currentVersion = fromU64(ack.error.current_version, "current_version");
    }
    if (
      pending.resent &&
      pending.request.finish_turn &&
      error instanceof TurnAlreadyFinishedError
    ) {
      // The finish may have committed on the stream that broke: this is what
      // its success looks like now.
      pending.resolve({ positions: [], eventCount: undefined });
    } else {
      pending.reject(error);
    }
  }

  /** The stream ended (`error` undefined: with status OK) or failed; reopen it or fail the calls. */
  #broken(
    stream: ClientDuplexStream<AppendStreamRequest, AppendStreamResponse>,
    error: TurnstoreError | undefined,
  ): void {
    if (this.#stream !== stream) {
      return; // "end" after "error", or a stream already replaced
    }
    this.#stream = undefined;
    this.#clearIdle();
    const waiting = [...this.#unacked.values()].filter((pending) => !pending.done);
    if (waiting.length === 0) {
      this.#unacked.clear();
      this.#failures = 0;
      return;
    }
    if (this.#closed) {
      this.#failAll(new UnavailableError("the client was closed", { cause: error }));
      return;
    }
    // The daemon ends the stream only when it shuts down: a stream that ends
    // with items unacknowledged is as unavailable as one that failed.
    const cause = error ?? new UnavailableError("the daemon ended the append stream");
    if (!(cause instanceof UnavailableError)) {
      this.#failures = 0;
      this.#failAll(cause); // UNAUTHENTICATED, a message too large...: resending cannot help
      return;
    }
    let resending = false;
    for (const pending of waiting) {
      if (pending.sends >= this.#calls.retry.attempts) {
        this.#unacked.delete(pending.id);
        this.#settle(pending);
        pending.reject(cause);
      } else {
        pending.resent = true;
        resending = true;
      }
    }
    if (!resending) {
      this.#unacked.clear(); // only callers that stopped waiting are left
      this.#failures = 0;
      return;
    }
    this.#failures += 1;
    const delayMs = this.#calls.delayBefore(this.#failures + 1, cause);
    this.#reopenTimer = setTimeout(() => this.#open(), delayMs);
  }

  #failAll(error: TurnstoreError): void {
    const waiting = [...this.#unacked.values()];
    this.#unacked.clear();
    for (const pending of waiting) {
      if (!pending.done) {
        this.#settle(pending);
        pending.reject(error);
      }
    }
  }

  #settle(pending: Pending): void {
    pending.done = true;
    if (pending.timer !== undefined) {
      clearTimeout(pending.timer);
      pending.timer = undefined;
    }
  }

  #startIdle(): void {
    this.#clearIdle();
    const stream = this.#stream;
    if (stream === undefined) {
      return;
    }
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = undefined;
      if (this.#stream === stream && this.#unacked.size === 0) {
        this.#stream = undefined;
        stream.end();
      }
    }, IDLE_MS);
    this.#idleTimer.unref();
  }

  #clearIdle(): void {
    if (this.#idleTimer !== undefined) {
      clearTimeout(this.#idleTimer);
      this.#idleTimer = undefined;
    }
  }
}
