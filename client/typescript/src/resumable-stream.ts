/**
 * A resumable-stream context for Vercel's AI SDK, stored in turnstore: the
 * four functions of the `resumable-stream` package's
 * `createResumableStreamContext`, so that a route switches by changing its
 * import to `@turnstore/client/resumable-stream`.
 *
 * Where Redis's version buffers the chunks in the producing process and
 * hands them to a resuming reader over pub/sub, this one stores every chunk
 * in the daemon as it goes: a resume reads what was stored (from any
 * process, also once the producer died or the stream finished) and then
 * follows the live tail. docs/ai-sdk.md is the user's page.
 *
 * One stream is one turn of one thread (by default turn 1 of the thread
 * `<keyPrefix>:<streamId>`, see {@link StreamLocation}); its events, in
 * order:
 * - `resumable_stream_start` (id derived from the stream): written once; the
 *   producer that stored it owns the stream (`owner` field);
 * - `resumable_stream_chunk` (`index`, `text`; id derived from the stream and
 *   the index, so a chunk sent again is never stored twice);
 * - `resumable_stream_heartbeat`: written by a live producer that had
 *   nothing to write for `heartbeatIntervalMs`;
 * - `resumable_stream_end` (`reason`: "done", "error" or "abandoned"),
 *   then the turn's finish barrier, which is what "finished" means.
 */
import { createHash, randomUUID } from "node:crypto";

import { DEFAULT_TARGET, TurnstoreClient } from "./client";
import type { TurnstoreClientOptions } from "./client";
import { newEnvelope } from "./envelope";
import type { EventEnvelope } from "./envelope";
import {
  FollowerTooSlowError,
  InvalidArgumentError,
  TurnAlreadyFinishedError,
  TurnFinishedError,
  UnavailableError,
} from "./errors";

/** The event types a stream is stored as (see the module's comment). */
export const STREAM_EVENT_TYPES = Object.freeze({
  start: "resumable_stream_start",
  chunk: "resumable_stream_chunk",
  heartbeat: "resumable_stream_heartbeat",
  end: "resumable_stream_end",
} as const);

/** Where one stream is stored: a turn of a thread. */
export interface StreamLocation {
  threadId: string;
  turn: number;
}

/** Options of {@link createResumableStreamContext}; all optional. */
export interface CreateResumableStreamContextOptions {
  /**
   * Keeps the serverless function alive until the producer has stored the
   * whole stream (Next.js's `after`, Vercel's `waitUntil`); `null` or unset
   * on a long-running server.
   */
  waitUntil?: ((promise: Promise<unknown>) => void) | null;
  /**
   * The client to store streams with (the context never closes it). Unset:
   * one client per `target`, shared by every context made without `client`
   * or `clientOptions` and never closed (it lets a program exit when idle),
   * so that a context made per request costs no channel.
   */
  client?: TurnstoreClient;
  /** The daemon when no `client` is given. Default: `TURNSTORE_TARGET`, else 127.0.0.1:7070. */
  target?: string;
  /**
   * Options of a client made for `target` for this context alone (a token,
   * TLS, ...), closed by {@link ResumableStreamContext.close}.
   */
  clientOptions?: TurnstoreClientOptions;
  /** The prefix of each stream's thread id (default `resumable-stream`). */
  keyPrefix?: string;
  /**
   * Where a stream is stored. Default: turn 1 of the thread
   * `<keyPrefix>:<streamId>`. Map a chat's streams to turns of the chat's
   * thread with, e.g., `(id) => ({ threadId: chatOf(id), turn: turnOf(id) })`:
   * each stream needs a turn of its own.
   */
  locate?: (streamId: string) => StreamLocation;
  /**
   * What resuming a finished stream gives: `true` (the default) replays it
   * whole; `false` gives `null`, as the Redis package does.
   */
  replayFinished?: boolean;
  /**
   * A producer that wrote nothing for this long writes a heartbeat, so that
   * readers can tell it is alive (default 5 000 ms).
   */
  heartbeatIntervalMs?: number;
  /**
   * A reader that caught up and then saw nothing of the stream, not even a
   * heartbeat, for this long takes the producer for dead: it ends the
   * stream (an `abandoned` end, then the finish barrier) and closes
   * (default 30 000 ms; keep it several heartbeats long).
   */
  staleAfterMs?: number;
}

/** The functions of `resumable-stream`'s context, with the same signatures and results. */
export interface ResumableStreamContext {
  /**
   * Starts the stream (calling `makeStream`) if no stream with this id was
   * ever started, else resumes it (see {@link resumeExistingStream}); two
   * concurrent calls start it once. `skipCharacters` skips that many
   * characters (UTF-16 code units) of the concatenated chunks. Returns null
   * only for a finished stream with `replayFinished: false`.
   */
  resumableStream: (
    streamId: string,
    makeStream: () => ReadableStream<string>,
    skipCharacters?: number,
  ) => Promise<ReadableStream<string> | null>;
  /**
   * Reads a stream from the start (after `skipCharacters` characters): what
   * was stored, then each chunk as it is stored, until the stream finishes.
   * undefined when no stream with this id was started; for a finished
   * stream, the whole of it (null with `replayFinished: false`).
   */
  resumeExistingStream: (
    streamId: string,
    skipCharacters?: number,
  ) => Promise<ReadableStream<string> | null | undefined>;
  /**
   * Starts the stream: reads `makeStream()` to its end, storing each chunk
   * before passing it on in the stream returned, which it goes on doing
   * when that stream's reader goes away. When a stream with this id was
   * already started, `makeStream` is not called and the existing stream is
   * resumed (never two producers on one stream).
   */
  createNewResumableStream: (
    streamId: string,
    makeStream: () => ReadableStream<string>,
    skipCharacters?: number,
  ) => Promise<ReadableStream<string> | null>;
  /**
   * null when no stream with this id was started, `true` while it is not
   * finished, `"DONE"` once it is (its finish barrier is stored).
   */
  hasExistingStream: (streamId: string) => Promise<null | true | "DONE">;
  /**
   * Closes the client made for this context's `clientOptions`; a no-op for
   * one passed in `client` or a shared one. Streams in progress fail.
   */
  close: () => void;
}

/**
 * The clients of contexts made with neither `client` nor `clientOptions`, one
 * per target: a route that makes a context per request (as the AI SDK's
 * examples do) must not open a channel per request, which nothing would close.
 */
const SHARED_CLIENTS = new Map<string, TurnstoreClient>();

function sharedClient(target: string): TurnstoreClient {
  let client = SHARED_CLIENTS.get(target);
  if (client === undefined) {
    client = new TurnstoreClient(target);
    SHARED_CLIENTS.set(target, client);
  }
  return client;
}

/** The namespace of the stream's deterministic event ids (UUID v5, RFC 9562). */
const ID_NAMESPACE = Buffer.from("6c1f0d1e4b7a4f0e9d2a8b3c5e7f9a01", "hex");

/** A name-based UUID (v5) for `name`: the same name gives the same id in every process. */
function nameUuid(name: string): string {
  const hash = createHash("sha1").update(ID_NAMESPACE).update(name, "utf8").digest();
  hash[6] = ((hash[6] ?? 0) & 0x0f) | 0x50;
  hash[8] = ((hash[8] ?? 0) & 0x3f) | 0x80;
  const hex = hash.subarray(0, 16).toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The event ids of one stream, derived from its location. */
function streamIds(at: StreamLocation): {
  start: string;
  chunk: (index: number) => string;
  end: string;
} {
  const base = `${at.threadId}\u0000${at.turn}`;
  return {
    start: nameUuid(`${base}\u0000start`),
    chunk: (index) => nameUuid(`${base}\u0000chunk\u0000${index}`),
    end: nameUuid(`${base}\u0000end`),
  };
}

function envelope(eventId: string, sequence: number, event: Record<string, unknown>, type: string) {
  const made: EventEnvelope = newEnvelope({ ...event, type }, sequence);
  made.eventId = eventId;
  return made;
}

function positiveMs(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value <= 0) {
    throw new InvalidArgumentError(`${name} must be a positive number of milliseconds`);
  }
  return value;
}

function checkSkip(skipCharacters: number | undefined): number {
  const skip = skipCharacters ?? 0;
  if (!Number.isSafeInteger(skip) || skip < 0) {
    throw new InvalidArgumentError("skipCharacters must be an integer >= 0");
  }
  return skip;
}

/** Skips the first `skip` characters of a run of chunks, across chunk boundaries. */
class CharacterSkip {
  #left: number;
  constructor(skip: number) {
    this.#left = skip;
  }
  /** What of `chunk` is left to pass on ("" when all of it is skipped). */
  take(chunk: string): string {
    if (this.#left === 0) return chunk;
    const cut = Math.min(this.#left, chunk.length);
    this.#left -= cut;
    return chunk.slice(cut);
  }
}

/**
 * A resumable-stream context over a turnstore daemon: the drop-in for
 * `createResumableStreamContext` of the `resumable-stream` package (its
 * Redis `publisher`/`subscriber` options have no meaning here; pass a
 * `client` or `target` instead). Throws InvalidArgumentError for a bad
 * option.
 */
export function createResumableStreamContext(
  options: CreateResumableStreamContextOptions = {},
): ResumableStreamContext {
  const heartbeatMs = positiveMs(options.heartbeatIntervalMs, 5_000, "heartbeatIntervalMs");
  const staleAfterMs = positiveMs(options.staleAfterMs, 30_000, "staleAfterMs");
  const keyPrefix = options.keyPrefix ?? "resumable-stream";
  const replayFinished = options.replayFinished ?? true;
  const waitUntil = options.waitUntil ?? undefined;
  const target = options.target ?? process.env.TURNSTORE_TARGET ?? DEFAULT_TARGET;
  const ownsClient = options.client === undefined && options.clientOptions !== undefined;
  const client =
    options.client ??
    (ownsClient ? new TurnstoreClient(target, options.clientOptions) : sharedClient(target));
  const events = client.events;

  function locate(streamId: string): StreamLocation {
    if (typeof streamId !== "string" || streamId === "") {
      throw new InvalidArgumentError("a streamId must be a non-empty string");
    }
    const at = options.locate?.(streamId) ?? { threadId: `${keyPrefix}:${streamId}`, turn: 1 };
    if (!Number.isSafeInteger(at.turn) || at.turn < 0 || at.threadId === "") {
      throw new InvalidArgumentError(`locate(${streamId}) gave no usable thread and turn`);
    }
    return at;
  }

  /** The stream's state from its start event and its finish barrier (one cheap replay). */
  async function state(at: StreamLocation): Promise<null | true | "DONE"> {
    let started = false;
    const replay = events.replay(at.threadId, {
      fromTurn: at.turn,
      toTurn: at.turn,
      eventTypes: [STREAM_EVENT_TYPES.start],
    });
    for await (const item of replay) {
      if (item.kind === "turn_finished") return "DONE";
      if (item.kind === "event") started = true;
    }
    return started ? true : null;
  }

  /** Ends the stream: its end event, then the finish barrier; already finished is success. */
  async function seal(at: StreamLocation, reason: string, detail?: string): Promise<void> {
    const fields: Record<string, unknown> = { reason };
    if (detail !== undefined) fields.detail = detail;
    try {
      await events.append(
        at.threadId,
        at.turn,
        envelope(streamIds(at).end, 0, fields, STREAM_EVENT_TYPES.end),
      );
    } catch (error) {
      if (!(error instanceof TurnFinishedError)) throw error;
      return;
    }
    try {
      await events.finishTurn(at.threadId, at.turn);
    } catch (error) {
      if (!(error instanceof TurnAlreadyFinishedError)) throw error;
    }
  }

  /**
   * Claims the stream: stores its start event with a fresh owner token and
   * reads back whose start is stored (the daemon keeps the first of one id).
   * True when this call owns it; false when it was started before (or its
   * turn is finished).
   */
  async function claim(at: StreamLocation): Promise<boolean> {
    const owner = randomUUID();
    let position: number;
    try {
      const start = envelope(streamIds(at).start, 0, { owner }, STREAM_EVENT_TYPES.start);
      [position = -1] = await events.append(at.threadId, at.turn, start);
    } catch (error) {
      if (error instanceof TurnFinishedError) return false;
      throw error;
    }
    for await (const stored of events.readEvents(at.threadId, { offset: position })) {
      return stored.envelope.event.owner === owner;
    }
    return false;
  }

  /** The stream read from the daemon: stored chunks, then live ones, until finished. */
  function follow(at: StreamLocation, skip: number): ReadableStream<string> {
    const skipper = new CharacterSkip(skip);
    const cancel = new AbortController();
    let staleTimer: NodeJS.Timeout | undefined;
    const armStale = () => {
      clearTimeout(staleTimer);
      staleTimer = setTimeout(() => {
        // Nothing, not even a heartbeat, for staleAfterMs: the producer is gone.
        // Sealing ends the replay below through the finish barrier it stores.
        seal(at, "abandoned").catch(armStale);
      }, staleAfterMs);
    };
    return new ReadableStream<string>({
      start: (controller) => {
        (async () => {
          let after: number | undefined;
          let epoch: number | undefined;
          let caughtUp = false;
          let failures = 0;
          try {
            for (;;) {
              const replay = events.replay(at.threadId, {
                after,
                epoch,
                fromTurn: at.turn,
                toTurn: at.turn,
                follow: true,
                untilTurnFinished: at.turn,
                signal: cancel.signal,
              });
              try {
                for await (const item of replay) {
                  failures = 0;
                  if (item.kind === "caught_up") {
                    caughtUp = true;
                    armStale();
                  } else if (item.kind === "thread_cleared") {
                    return;
                  } else if (item.kind === "event") {
                    if (caughtUp) armStale();
                    const event = item.event.envelope.event;
                    if (event.type === STREAM_EVENT_TYPES.chunk && typeof event.text === "string") {
                      const text = skipper.take(event.text);
                      if (text !== "") controller.enqueue(text);
                    }
                  }
                }
                return; // the finish barrier came (or the reader cancelled)
              } catch (error) {
                // A broken replay goes on from the last position it delivered: no chunk twice.
                const transient =
                  error instanceof UnavailableError || error instanceof FollowerTooSlowError;
                failures += 1;
                if (!transient || failures > 5) throw error;
                after = replay.lastPosition;
                epoch = replay.epoch;
                await new Promise((resolve) => setTimeout(resolve, 100 * 2 ** failures));
              }
            }
          } finally {
            clearTimeout(staleTimer);
          }
        })().then(
          () => {
            try {
              controller.close();
            } catch {
              // already closed or cancelled by its reader
            }
          },
          (error: unknown) => {
            try {
              controller.error(error);
            } catch {
              // already closed or cancelled by its reader
            }
          },
        );
      },
      cancel: () => {
        clearTimeout(staleTimer);
        cancel.abort();
      },
    });
  }

  /** Runs the producer: stores `source`'s chunks in order and passes each on once stored. */
  function produce(at: StreamLocation, source: ReadableStream<string>, skip: number) {
    const ids = streamIds(at);
    const skipper = new CharacterSkip(skip);
    const pending: string[] = [];
    let sourceDone = false;
    let sourceError: unknown;
    let wake: (() => void) | undefined;
    const poke = () => {
      wake?.();
      wake = undefined;
    };
    let local: ReadableStreamDefaultController<string> | undefined;
    const pass = (chunk: string) => {
      const text = skipper.take(chunk);
      try {
        if (text !== "") local?.enqueue(text);
      } catch {
        // The first reader went away; producing goes on for the others.
      }
    };
    const reader = source.getReader();

    const reading = (async () => {
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          if (typeof value !== "string") {
            throw new TypeError("a resumable stream's chunks must be strings");
          }
          pending.push(value);
          poke();
        }
      } catch (error) {
        sourceError = error;
      } finally {
        sourceDone = true;
        poke();
      }
    })();

    // One write in flight at a time, so positions follow chunk order; chunks that
    // arrive meanwhile go together in the next (atomic) append.
    const writing = (async () => {
      let index = 0;
      for (;;) {
        if (pending.length === 0) {
          if (sourceDone) break;
          let timer: NodeJS.Timeout | undefined;
          const woken = await new Promise<boolean>((resolve) => {
            wake = () => resolve(true);
            timer = setTimeout(() => resolve(false), heartbeatMs);
          });
          clearTimeout(timer);
          if (!woken && pending.length === 0 && !sourceDone) {
            const beat = envelope(randomUUID(), 0, {}, STREAM_EVENT_TYPES.heartbeat);
            await events.append(at.threadId, at.turn, beat);
          }
          continue;
        }
        const batch = pending.splice(0);
        const first = index;
        index += batch.length;
        await events.append(
          at.threadId,
          at.turn,
          batch.map((text, i) =>
            envelope(
              ids.chunk(first + i),
              first + i,
              { index: first + i, text },
              STREAM_EVENT_TYPES.chunk,
            ),
          ),
        );
        batch.forEach(pass);
      }
      await reading;
      if (sourceError !== undefined) throw sourceError;
      await seal(at, "done");
    })();

    const finished = writing.then(
      () => {
        try {
          local?.close();
        } catch {
          // cancelled by its reader
        }
      },
      async (error: unknown) => {
        // The source failed, or storing did (a chunk over the daemon's limits, the
        // daemon gone, a reader that sealed the stream as abandoned): stop reading
        // the source, end the stream as failed if no one ended it (when the daemon
        // is unreachable, a reader seals it once it is stale), then fail the first
        // reader's stream: what it is told has been stored.
        reader.cancel(error).catch(() => {});
        if (!(error instanceof TurnFinishedError)) {
          await seal(at, "error", String(error)).catch(() => {});
        }
        try {
          local?.error(error);
        } catch {
          // cancelled by its reader
        }
      },
    );
    waitUntil?.(finished);
    return new ReadableStream<string>({
      start: (controller) => {
        local = controller;
      },
    });
  }

  async function resumeExistingStream(
    streamId: string,
    skipCharacters?: number,
  ): Promise<ReadableStream<string> | null | undefined> {
    const at = locate(streamId);
    const skip = checkSkip(skipCharacters);
    const current = await state(at);
    if (current === null) return undefined;
    if (current === "DONE" && !replayFinished) return null;
    return follow(at, skip);
  }

  async function createNewResumableStream(
    streamId: string,
    makeStream: () => ReadableStream<string>,
    skipCharacters?: number,
  ): Promise<ReadableStream<string> | null> {
    const at = locate(streamId);
    const skip = checkSkip(skipCharacters);
    if (await claim(at)) {
      let source: ReadableStream<string>;
      try {
        source = makeStream();
      } catch (error) {
        await seal(at, "error", String(error)).catch(() => {});
        throw error;
      }
      return produce(at, source, skip);
    }
    return (await resumeExistingStream(streamId, skip)) ?? null;
  }

  return {
    resumableStream: createNewResumableStream,
    resumeExistingStream,
    createNewResumableStream,
    hasExistingStream: (streamId) => state(locate(streamId)),
    close: () => {
      if (ownsClient) client.close();
    },
  };
}

/** The headers of a UI message stream (the AI SDK's `UI_MESSAGE_STREAM_HEADERS`). */
export const UI_MESSAGE_STREAM_HEADERS: Readonly<Record<string, string>> = Object.freeze({
  "content-type": "text/event-stream",
  "cache-control": "no-cache",
  connection: "keep-alive",
  "x-vercel-ai-ui-message-stream": "v1",
  "x-accel-buffering": "no",
});

/**
 * The answer of a reconnect route (`useChat`'s resume GET): 204 with no
 * body when there is nothing to resume (no `streamId`, a stream never
 * started, or a finished one under `replayFinished: false`), else 200 with
 * the stream as UTF-8 and `headers` (default {@link UI_MESSAGE_STREAM_HEADERS}).
 */
export async function resumeStreamResponse(
  context: Pick<ResumableStreamContext, "resumeExistingStream">,
  streamId: string | null | undefined,
  options: { skipCharacters?: number; headers?: Record<string, string> } = {},
): Promise<Response> {
  const stream =
    streamId === null || streamId === undefined
      ? undefined
      : await context.resumeExistingStream(streamId, options.skipCharacters);
  if (stream === null || stream === undefined) {
    return new Response(null, { status: 204 });
  }
  return new Response(stream.pipeThrough(new TextEncoderStream()), {
    status: 200,
    headers: options.headers ?? UI_MESSAGE_STREAM_HEADERS,
  });
}
