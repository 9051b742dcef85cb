/** The EventStore contract over EventStoreService. */
import type { CallOptions } from "@grpc/grpc-js";

import type { SharedAppendStream } from "./appendstream";
import { deadline } from "./calls";
import type { Calls } from "./calls";
import { envelopeToWire, storedEventFromWire, turnFromWire } from "./envelope";
import type { EventEnvelope, StoredEvent, StoredTurn } from "./envelope";
import { InvalidArgumentError, TurnAlreadyFinishedError, toTurnstoreError } from "./errors";
import type { TurnstoreError } from "./errors";
import { checkU64, fromU64 } from "./numbers";
import type {
  AppendResponse,
  ClearResponse,
  EventCountResponse,
  EventStoreServiceClient,
  FinishTurnResponse,
  GetTurnResponse,
  ListTurnsResponse,
  ReadEventsRequest,
  ReadEventsResponse,
  ReplayRequest,
} from "./proto";
import { Replay } from "./replay";

/** What to replay, and how; every field is optional. */
export interface ReplayOptions {
  /** Start after this position (the last one received). Unset: from the start. */
  after?: number;
  /** Keep streaming events as they are committed once caught up. */
  follow?: boolean;
  /** Only events and finish markers of turns >= fromTurn. */
  fromTurn?: number;
  /** Only events and finish markers of turns <= toTurn. */
  toTurn?: number;
  /** Only events of these types (finish markers are never filtered by type). */
  eventTypes?: readonly string[];
  /** End the replay once this turn's finish marker was yielded. */
  untilTurnFinished?: number;
  /** The `epoch` of the replay `after` came from: a clear since ends the replay at once. */
  epoch?: number;
  /** Most events per message (0: the daemon's default). */
  maxEventsPerMessage?: number;
  /**
   * Deadline of the whole replay in milliseconds, from its start (retries
   * included); past it the replay rejects with DeadlineExceededError. Unset:
   * the client's `timeoutMs` without `follow`, none with it (a follower is
   * long-lived; keepalive pings find a daemon that stopped answering).
   * `undefined` given explicitly: none.
   */
  timeoutMs?: number | undefined;
  /** Aborting it cancels the replay (the iteration ends without an error). */
  signal?: AbortSignal;
}

/**
 * The order {@link TurnstoreEventStore.readEvents} walks a thread in:
 * `"commit"` by position (an offset of n starts at position n), `"turn"`
 * turn by turn in ascending order, each turn in append order (the order of
 * {@link TurnstoreEventStore.getEvents}).
 */
export type EventOrder = "commit" | "turn";

/** What {@link TurnstoreEventStore.readEvents} reads; every field is optional. */
export interface ReadEventsOptions {
  /** How many events to skip, counted in `order` (default 0). */
  offset?: number;
  /** The order to read in (default `"commit"`). */
  order?: EventOrder;
  /** At most this many events (default 0: every one). */
  limit?: number;
  /**
   * Read from the newest event backwards (commit order only): events come in
   * descending position order and `offset` skips the newest. Costs what it
   * returns, not the thread's length.
   */
  newestFirst?: boolean;
}

/** Options of {@link TurnstoreEventStore.append}. */
export interface AppendOptions {
  /**
   * Append only if the thread's next position (its event count; 0 for a new
   * or cleared thread) is this, else reject with VersionConflictError and
   * store nothing. A retry of envelopes already stored resolves with their
   * positions without that check.
   */
  expectedNextPosition?: number;
}

const WIRE_ORDERS: Record<EventOrder, ReadEventsRequest["order"]> = {
  commit: "EVENT_ORDER_COMMIT",
  turn: "EVENT_ORDER_TURN",
};

/**
 * How `append` and `finishTurn` reach the daemon: `"stream"` (the default)
 * as items of one AppendStream shared by every caller of the client,
 * `"unary"` as one Append or FinishTurn call each. Callers see the same
 * results and errors either way.
 */
export type WriteMode = "stream" | "unary";

/**
 * Per-thread, turn-scoped event streams; obtain it as `client.events`.
 * (The same name, `TurnstoreEventStore`, in the Python and Rust clients.)
 *
 * Every write resolves only after the daemon has durably committed it. Every
 * method rejects with a TurnstoreError; arguments that cannot be sent (a
 * turn that is not a safe integer >= 0, an event without a string `type`)
 * are rejected before any call. Calls failing with UnavailableError are
 * retried by the client's retry policy (reads only until they yielded
 * something), then reject with it.
 */
export class TurnstoreEventStore {
  readonly #stub: EventStoreServiceClient;
  readonly #calls: Calls;
  /** The shared stream of writes; undefined in "unary" write mode. */
  readonly #writes: SharedAppendStream | undefined;

  /** @internal Use TurnstoreClient.events. */
  constructor(stub: EventStoreServiceClient, calls: Calls, writes: SharedAppendStream | undefined) {
    this.#stub = stub;
    this.#calls = calls;
    this.#writes = writes;
  }

  /**
   * Appends one envelope, or several atomically (all are stored or none), to
   * the end of `turn`, creating the thread and turn if needed; resolves with
   * their positions in the thread, in order.
   *
   * Idempotent by event id: an envelope whose id is already stored in this
   * turn is not stored again and its original position is returned, so a
   * retry after UnavailableError never duplicates. Rejects with
   * TurnFinishedError when the turn is finished, EventIdConflictError when an
   * id is stored in another turn, InvalidArgumentError for an empty list, an
   * empty thread id or a value over the daemon's limits. Over the shared
   * stream, a rejected append fails only its own call; a stream that breaks
   * is reopened and the append sent again (see {@link WriteMode}). A batch
   * that might not fit the channel's message limit (64 MiB) is sent as a
   * unary call even then, so that it alone fails if it is too large. With
   * `options.expectedNextPosition`, see {@link AppendOptions}.
   */
  async append(
    threadId: string,
    turn: number,
    envelopes: EventEnvelope | readonly EventEnvelope[],
    options: AppendOptions = {},
  ): Promise<number[]> {
    const list: readonly EventEnvelope[] = Array.isArray(envelopes) ? envelopes : [envelopes];
    const expected =
      options.expectedNextPosition === undefined
        ? undefined
        : checkU64(options.expectedNextPosition, "expectedNextPosition");
    const request = {
      thread_id: threadId,
      turn: checkU64(turn, "turn"),
      events: list.map(envelopeToWire),
      ...(expected !== undefined && { expected_next_position: expected }),
    };
    const positions =
      this.#writes !== undefined && this.#writes.fits(request.thread_id, request.events)
        ? (
            await this.#writes.submit(
              request.thread_id,
              request.turn,
              request.events,
              false,
              expected,
            )
          ).positions
        : (
            await this.#calls.unary<AppendResponse>((options, done) =>
              this.#stub.Append(request, options, done),
            )
          ).positions;
    return positions.map((position) => fromU64(position, "position"));
  }

  /**
   * Closes `turn` (the finish barrier) and resolves once the daemon
   * committed it, with nothing (as `finish_turn` in the Python and Rust
   * clients: read the turn with {@link getTurn} for its events). Finishing a
   * turn never appended to creates an empty finished turn. Rejects with
   * TurnAlreadyFinishedError when it is already finished, except when the
   * finish was sent again (a retry, or a resend on a new shared stream):
   * then the first attempt may have finished it, and that is this call's
   * success.
   */
  async finishTurn(threadId: string, turn: number): Promise<void> {
    const request = { thread_id: threadId, turn: checkU64(turn, "turn") };
    if (this.#writes === undefined) {
      await this.#calls.unary<FinishTurnResponse | undefined>(
        (options, done) => this.#stub.FinishTurn(request, options, done),
        {
          doneIfRetryFinds: {
            error: TurnAlreadyFinishedError,
            result: () => Promise.resolve(undefined),
          },
        },
      );
      return;
    }
    await this.#writes.submit(request.thread_id, request.turn, [], true);
  }

  /**
   * One turn with its events in append order, or undefined when the thread
   * or the turn does not exist. A turn too large for one message rejects with
   * ResourceExhaustedError: use {@link listTurns} for those.
   */
  async getTurn(threadId: string, turn: number): Promise<StoredTurn | undefined> {
    const request = { thread_id: threadId, turn: checkU64(turn, "turn") };
    const response = await this.#calls.unary<GetTurnResponse>((options, done) =>
      this.#stub.GetTurn(request, options, done),
    );
    return response.found && response.turn !== null ? turnFromWire(response.turn) : undefined;
  }

  /**
   * Streams every turn of the thread in ascending turn order, each whole
   * (the pieces the daemon splits a large turn into are joined). Nothing for
   * an unknown thread. The read covers what was committed when it started;
   * it rejects with ThreadClearedError if the thread is cleared meanwhile.
   * Leaving the loop early cancels the call. A read that fails with
   * UnavailableError before it yielded a turn is started again by the
   * retry policy; one that fails later rejects at once.
   */
  async *listTurns(threadId: string): AsyncGenerator<StoredTurn, void, undefined> {
    let yielded = false;
    for (let attempt = 1; ; attempt += 1) {
      this.#calls.checkOpen();
      const call = this.#stub.ListTurns({ thread_id: threadId }, this.#calls.options());
      call.on("error", () => {}); // see Replay: the status after a cancel
      let current: StoredTurn | undefined;
      let failure: TurnstoreError;
      try {
        for await (const message of call as AsyncIterable<ListTurnsResponse>) {
          if (message.turn === null) {
            continue;
          }
          const piece = turnFromWire(message.turn);
          if (current !== undefined && current.turn === piece.turn) {
            current.events.push(...piece.events);
          } else {
            if (current !== undefined) {
              yielded = true;
              yield current;
            }
            current = piece;
          }
        }
        if (current !== undefined) {
          yield current;
        }
        return;
      } catch (error) {
        failure = toTurnstoreError(error);
      } finally {
        call.cancel();
      }
      if (yielded || !this.#calls.mayRetry(failure, attempt)) {
        throw failure;
      }
      await this.#calls.pause(attempt, failure);
    }
  }

  /** Every turn of the thread, as {@link listTurns}, in one array (empty for an unknown thread). */
  async getTurns(threadId: string): Promise<StoredTurn[]> {
    const turns: StoredTurn[] = [];
    for await (const turn of this.listTurns(threadId)) {
      turns.push(turn);
    }
    return turns;
  }

  /**
   * All envelopes of the thread, turn by turn in ascending turn order, each
   * turn in append order (not commit order when turns interleave); empty for
   * an unknown thread. As {@link getEventsSince} with offset 0.
   */
  async getEvents(threadId: string): Promise<EventEnvelope[]> {
    return this.getEventsSince(threadId, 0);
  }

  /**
   * The envelopes of {@link getEvents} after its first `offset`: empty when
   * `offset` is at or past the end (or the thread is unknown). Rejects with
   * InvalidArgumentError, before any call, for an offset that is not a safe
   * integer >= 0. The read covers what was committed when it started; it
   * rejects with ThreadClearedError if the thread is cleared meanwhile. A
   * read that fails with UnavailableError is started again whole by the
   * retry policy (nothing was returned yet).
   */
  async getEventsSince(threadId: string, offset: number): Promise<EventEnvelope[]> {
    const request = readRequest(threadId, offset, "turn");
    for (let attempt = 1; ; attempt += 1) {
      const envelopes: EventEnvelope[] = [];
      let failure: TurnstoreError;
      try {
        for await (const event of this.#readEventsOnce(request)) {
          envelopes.push(event.envelope);
        }
        return envelopes;
      } catch (error) {
        failure = toTurnstoreError(error);
      }
      if (!this.#calls.mayRetry(failure, attempt)) {
        throw failure;
      }
      await this.#calls.pause(attempt, failure);
    }
  }

  /**
   * Streams the thread's stored events (envelope, position, turn, commit
   * time), skipping the first `offset` in `order` (see {@link EventOrder});
   * nothing for an unknown thread or an offset past the end. An offset that
   * is not a safe integer >= 0, or an unknown order, rejects the first
   * `next()` with InvalidArgumentError before any call. The read covers what
   * was committed when it started; it rejects with ThreadClearedError if the
   * thread is cleared meanwhile. Leaving the loop early cancels the call. A
   * read that fails with UnavailableError before it yielded an event is
   * started again by the retry policy; one that fails later rejects at once
   * (resume with `offset` = the events received so far).
   */
  async *readEvents(
    threadId: string,
    options: ReadEventsOptions = {},
  ): AsyncGenerator<StoredEvent, void, undefined> {
    const request = readRequest(threadId, options.offset ?? 0, options.order ?? "commit");
    request.limit = checkU64(options.limit ?? 0, "limit");
    request.newest_first = options.newestFirst === true;
    if (request.newest_first && request.order !== "EVENT_ORDER_COMMIT") {
      throw new InvalidArgumentError("newestFirst reads in commit order only");
    }
    let yielded = false;
    for (let attempt = 1; ; attempt += 1) {
      let failure: TurnstoreError;
      try {
        for await (const event of this.#readEventsOnce(request)) {
          yielded = true;
          yield event;
        }
        return;
      } catch (error) {
        failure = toTurnstoreError(error);
      }
      if (yielded || !this.#calls.mayRetry(failure, attempt)) {
        throw failure;
      }
      await this.#calls.pause(attempt, failure);
    }
  }

  /**
   * The last `n` stored events of the thread (fewer when it holds fewer), in
   * append order: one newest-first read of `n` events, whatever the
   * thread's length. Empty for `n` = 0 or an unknown thread.
   */
  async lastEvents(threadId: string, n: number): Promise<StoredEvent[]> {
    checkU64(n, "n");
    if (n === 0) {
      return [];
    }
    const newest: StoredEvent[] = [];
    for await (const event of this.readEvents(threadId, { limit: n, newestFirst: true })) {
      newest.push(event);
    }
    return newest.reverse();
  }

  /** One ReadEvents call's events, decoded; the call is cancelled when the loop ends early. */
  async *#readEventsOnce(request: ReadEventsRequest): AsyncGenerator<StoredEvent, void, undefined> {
    this.#calls.checkOpen();
    const call = this.#stub.ReadEvents(request, this.#calls.options());
    call.on("error", () => {}); // see Replay: the status after a cancel
    try {
      for await (const message of call as AsyncIterable<ReadEventsResponse>) {
        for (const event of message.events) {
          yield storedEventFromWire(event);
        }
      }
    } finally {
      call.cancel();
    }
  }

  /** How many events the thread holds (0 for an unknown thread). */
  async eventCount(threadId: string): Promise<number> {
    const response = await this.#calls.unary<EventCountResponse>((options, done) =>
      this.#stub.EventCount({ thread_id: threadId }, options, done),
    );
    return fromU64(response.count, "count");
  }

  /**
   * Removes every turn and event of the thread and resolves once the daemon
   * committed it, with nothing (as `clear` in the Python and Rust clients);
   * a no-op for an unknown thread. Positions restart at 0.
   */
  async clear(threadId: string): Promise<void> {
    await this.#calls.unary<ClearResponse>((options, done) =>
      this.#stub.Clear({ thread_id: threadId }, options, done),
    );
  }

  /**
   * Replays the thread: stored events in position order and the markers
   * `turn_finished`, `caught_up` (once) and `thread_cleared`; with `follow`,
   * then every event as it is committed. See {@link Replay} for how it ends
   * and is cancelled. Throws InvalidArgumentError at once for a number that
   * is not a safe integer >= 0; the daemon's InvalidArgumentError (fromTurn
   * after toTurn, too many event types) rejects the first `next()`.
   */
  replay(threadId: string, options: ReplayOptions = {}): Replay {
    const request: ReplayRequest = {
      thread_id: threadId,
      follow: options.follow ?? false,
      event_types: [...(options.eventTypes ?? [])],
      max_events_per_message: checkU64(options.maxEventsPerMessage ?? 0, "maxEventsPerMessage"),
      thread_epoch: checkU64(options.epoch ?? 0, "epoch"),
    };
    if (options.after !== undefined) request.after_position = checkU64(options.after, "after");
    if (options.fromTurn !== undefined) request.from_turn = checkU64(options.fromTurn, "fromTurn");
    if (options.toTurn !== undefined) request.to_turn = checkU64(options.toTurn, "toTurn");
    if (options.untilTurnFinished !== undefined) {
      request.until_turn_finished = checkU64(options.untilTurnFinished, "untilTurnFinished");
    }
    const timeoutMs =
      "timeoutMs" in options
        ? options.timeoutMs
        : options.follow === true
          ? undefined
          : this.#calls.timeoutMs;
    // One deadline for the whole replay, set when it starts: retries share it.
    let callOptions: CallOptions | undefined;
    return new Replay(
      () => this.#stub.Replay(request, (callOptions ??= deadline(timeoutMs))),
      this.#calls,
      options.after,
      options.epoch,
      options.signal,
    );
  }
}

/**
 * The ReadEvents request; throws InvalidArgumentError for an offset that is
 * not a safe integer >= 0 or an order other than "commit" and "turn".
 */
function readRequest(threadId: string, offset: number, order: EventOrder): ReadEventsRequest {
  if (!Object.hasOwn(WIRE_ORDERS, order)) {
    throw new InvalidArgumentError(`order must be "commit" or "turn", not ${String(order)}`);
  }
  return { thread_id: threadId, offset: checkU64(offset, "offset"), order: WIRE_ORDERS[order] };
}
