/**
 * EventStoreService.Replay as an async iterator of stored events and the
 * markers of the replay stream.
 */
import type { ClientReadableStream } from "@grpc/grpc-js";
import { status } from "@grpc/grpc-js";

import type { Calls } from "./calls";
import { storedEventFromWire } from "./envelope";
import type { StoredEvent } from "./envelope";
import { toTurnstoreError } from "./errors";
import type { TurnstoreError } from "./errors";
import { fromU64 } from "./numbers";
import type { ReplayResponse } from "./proto";

/** A stored event, in position order. */
export interface EventItem {
  kind: "event";
  event: StoredEvent;
}

/** Marker: `turn` was finished with `eventCount` events; it follows all of them. */
export interface TurnFinishedItem {
  kind: "turn_finished";
  turn: number;
  eventCount: number;
  /** The position of the turn's last event; undefined for an empty turn. */
  lastPosition: number | undefined;
}

/** Marker, sent once: everything stored when the replay caught up was delivered. */
export interface CaughtUpItem {
  kind: "caught_up";
  /** The position the next event of the thread will get. */
  nextPosition: number;
}

/** Marker: the thread was cleared under the replay; the iteration ends after it. */
export interface ThreadClearedItem {
  kind: "thread_cleared";
  nextPosition: number;
}

/** One item of a replay, told apart by `kind`. */
export type ReplayItem = EventItem | TurnFinishedItem | CaughtUpItem | ThreadClearedItem;

/** The items of one response message, in the order the contract gives them. */
function* itemsOf(message: ReplayResponse): Generator<ReplayItem> {
  for (const event of message.events) {
    yield { kind: "event", event: storedEventFromWire(event) };
  }
  for (const finished of message.finished_turns) {
    yield {
      kind: "turn_finished",
      turn: fromU64(finished.turn, "turn"),
      eventCount: fromU64(finished.event_count, "event_count"),
      lastPosition:
        finished.last_position === undefined
          ? undefined
          : fromU64(finished.last_position, "last_position"),
    };
  }
  const nextPosition = fromU64(message.next_position, "next_position");
  if (message.caught_up) {
    yield { kind: "caught_up", nextPosition };
  }
  if (message.thread_cleared) {
    yield { kind: "thread_cleared", nextPosition };
  }
}

/**
 * One replay of a thread: `for await (const item of replay)`.
 *
 * The call starts when the iteration does, and a replay can be iterated
 * once. It ends when the daemon ends the stream (caught up without `follow`,
 * the `untilTurnFinished` turn finished, or the thread cleared). Cancelling
 * it (`close()`, the `signal` given to `TurnstoreEventStore.replay`, or leaving the
 * loop early) ends the iteration without an error and frees the daemon's
 * follower; a replay cancelled before it started never calls the daemon.
 * Any other failure rejects with a TurnstoreError (DeadlineExceededError
 * when `timeoutMs` passes, UnavailableError when the daemon stops). A
 * replay that fails with UnavailableError before it yielded anything is
 * started again by the client's retry policy; once it has yielded an item,
 * it is not. To resume after a failure, start a new replay with
 * `after: replay.lastPosition, epoch: replay.epoch`.
 */
export class Replay implements AsyncIterable<ReplayItem> {
  /** The position of the last event yielded; before any, the `after` given. */
  lastPosition: number | undefined;
  /** The thread's epoch from the latest message; before any, the `epoch` given. */
  epoch: number | undefined;

  readonly #start: () => ClientReadableStream<ReplayResponse>;
  readonly #calls: Calls;
  /** Aborted by close(): ends a pause between attempts. */
  readonly #cancel = new AbortController();
  #call: ClientReadableStream<ReplayResponse> | undefined;
  #cancelled = false;
  #started = false;

  /** @internal Use TurnstoreEventStore.replay. */
  constructor(
    start: () => ClientReadableStream<ReplayResponse>,
    calls: Calls,
    after: number | undefined,
    epoch: number | undefined,
    signal: AbortSignal | undefined,
  ) {
    this.#start = start;
    this.#calls = calls;
    this.lastPosition = after;
    this.epoch = epoch;
    if (signal?.aborted) {
      this.close();
    } else {
      signal?.addEventListener("abort", () => this.close(), { once: true });
    }
  }

  /** Cancels the replay; a pending or later `next()` ends the iteration. Idempotent. */
  close(): void {
    if (!this.#cancelled) {
      this.#cancelled = true;
      this.#cancel.abort();
      this.#call?.cancel();
    }
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<ReplayItem, void, undefined> {
    if (this.#started) {
      throw new TypeError("a Replay can be iterated only once");
    }
    this.#started = true;
    let yielded = false;
    try {
      for (let attempt = 1; !this.#cancelled; attempt += 1) {
        this.#calls.checkOpen();
        const call = this.#start();
        // The status of a call cancelled after the loop was left arrives as an
        // "error" event; without a listener it would be thrown out of grpc-js.
        call.on("error", () => {});
        this.#call = call;
        let failure: TurnstoreError;
        try {
          for await (const message of call as AsyncIterable<ReplayResponse>) {
            if (message.thread_epoch !== "0") {
              this.epoch = fromU64(message.thread_epoch, "thread_epoch");
            }
            for (const item of itemsOf(message)) {
              if (item.kind === "event") {
                this.lastPosition = item.event.position;
              }
              yielded = true;
              yield item;
            }
          }
          return;
        } catch (error) {
          if (this.#cancelled && (error as { code?: unknown }).code === status.CANCELLED) {
            return;
          }
          failure = toTurnstoreError(error);
        }
        if (yielded || !this.#calls.mayRetry(failure, attempt)) {
          throw failure;
        }
        await this.#calls.pause(attempt, failure, this.#cancel.signal);
      }
    } finally {
      // Leaving the loop early must free the daemon's follower; a no-op once the call ended.
      this.close();
    }
  }
}
