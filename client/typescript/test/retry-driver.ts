/**
 * Calls made while the daemon is down are retried until it is back: driven
 * by tests/test_typescript.py, which stops the daemon and starts it again on
 * the same data directory and socket. Not a node:test file.
 *
 * Environment: TURNSTORE_TARGET, TURNSTORE_THREAD. Protocol (one line each):
 *  1. it writes turn 1 (two events, finished) to the thread and saves one
 *     snapshot, then prints `{"phase":"ready"}`;
 *  2. the test stops the daemon and writes `stopped`;
 *  3. with `attempts: 1`, a unary call, a stream append and a replay must
 *     fail at once with UnavailableError; with a patient policy, a save
 *     with an expected version must fail the same way, never retried. Then
 *     every kind of call starts, each on a client of its own, and once each
 *     has been retried at least once it prints `{"phase":"retrying", ...}`;
 *  4. the test starts the daemon and writes `started`;
 *  5. every call must then succeed: it prints `{"phase":"done", ...}` with
 *     what each gave and how many attempts each made, and exits 0 (1 with
 *     `{"phase":"failed"}` otherwise).
 */
import * as readline from "node:readline";

import { TurnstoreClient, UnavailableError, newEnvelope } from "../src/index";
import type { RetryPolicy, TurnstoreClientOptions } from "../src/index";

const target = process.env.TURNSTORE_TARGET ?? "";
const thread = process.env.TURNSTORE_THREAD ?? "";
const written = `${thread}-written`;
const key = `${thread}-conversation`;
/** Far longer than a daemon restart: 60 attempts, 50 ms doubling to 500 ms (30 s or more). */
const PATIENT: Partial<RetryPolicy> = { attempts: 60, initialBackoffMs: 50, maxBackoffMs: 500 };
const LIMIT_MS = 60_000;

const lines = readline.createInterface({ input: process.stdin });
const clients: TurnstoreClient[] = [];

function say(message: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

function nextLine(expected: string): Promise<void> {
  return new Promise((resolve, reject) => {
    lines.once("line", (line) => {
      if (line.trim() === expected) {
        resolve();
      } else {
        reject(new Error(`expected ${JSON.stringify(expected)}, got ${JSON.stringify(line)}`));
      }
    });
  });
}

function client(options: TurnstoreClientOptions = {}): TurnstoreClient {
  const made = new TurnstoreClient(target, { timeoutMs: 10_000, ...options });
  clients.push(made);
  return made;
}

/** The error `promise` rejects with, as its class name ("resolved" if it does not). */
async function failure(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
    return "resolved";
  } catch (error) {
    return error instanceof UnavailableError ? "UnavailableError" : String(error);
  }
}

/** A call on a patient client of its own, with how many retries it made and a promise of its first. */
function patient<T>(call: (client: TurnstoreClient) => Promise<T>, writeMode?: "unary") {
  let retries = 0;
  let firstRetry: () => void = () => {};
  const retried = new Promise<void>((resolve) => (firstRetry = resolve));
  const own = client({
    writeMode: writeMode ?? "stream",
    retry: {
      ...PATIENT,
      onRetry: () => {
        retries += 1;
        firstRetry();
      },
    },
  });
  const result = call(own);
  result.catch(() => {}); // awaited below; not an unhandled rejection meanwhile
  return { result, retried, attempts: () => retries + 1 };
}

async function main(): Promise<void> {
  const setup = client();
  await setup.events.append(thread, 1, [
    newEnvelope({ type: "x", n: 0 }, 0),
    newEnvelope({ type: "x", n: 1 }, 1),
  ]);
  await setup.events.finishTurn(thread, 1);
  await setup.history(key).save({ version: 1, messages: ["first"], pinned: [false] });
  say({ phase: "ready" });
  await nextLine("stopped");

  let onceRetries = 0;
  const once = client({ retry: { attempts: 1, onRetry: () => (onceRetries += 1) } });
  const startedOnce = Date.now();
  const onceErrors = {
    eventCount: await failure(once.events.eventCount(thread)),
    streamAppend: await failure(once.events.append(written, 9, newEnvelope({ type: "x" }))),
    replay: await failure(
      (async () => {
        for await (const item of once.events.replay(thread)) void item;
      })(),
    ),
  };
  const onceMs = Date.now() - startedOnce;
  let versionedRetries = 0;
  const versioned = client({ retry: { ...PATIENT, onRetry: () => (versionedRetries += 1) } });
  const versionedError = await failure(
    versioned
      .history(key)
      .save({ version: 1, messages: ["no"], pinned: [false] }, { expectedVersion: 1 }),
  );

  const calls = {
    eventCount: patient((own) => own.events.eventCount(thread)),
    getTurns: patient(async (own) =>
      (await own.events.getTurns(thread)).map((t) => [t.turn, t.finished, t.events.length]),
    ),
    getEvents: patient(async (own) => (await own.events.getEvents(thread)).map((e) => e.event.n)),
    readEvents: patient(async (own) => {
      const positions: number[] = [];
      for await (const stored of own.events.readEvents(thread)) positions.push(stored.position);
      return positions;
    }),
    replay: patient(async (own) => {
      const kinds: string[] = [];
      for await (const item of own.events.replay(thread)) kinds.push(item.kind);
      return kinds;
    }),
    load: patient(async (own) => (await own.history(key).loadVersioned())?.version),
    listVersions: patient(async (own) =>
      (await own.history(key).listVersions()).map((kept) => kept.version),
    ),
    save: patient((own) =>
      own.history(`${key}-saved`).save({ version: 1, messages: ["second"], pinned: [true] }),
    ),
    streamAppend: patient((own) => own.events.append(written, 1, newEnvelope({ type: "x" }))),
    // finishTurn resolves with nothing: "finished" says it resolved.
    unaryFinish: patient(async (own) => {
      await own.events.finishTurn(`${written}-finished`, 2);
      return "finished";
    }, "unary"),
    stats: patient(async (own) => typeof (await own.admin.stats()).openReplays),
  };
  await Promise.all(Object.values(calls).map((call) => call.retried));
  say({ phase: "retrying", onceErrors, onceMs, onceRetries, versionedError, versionedRetries });
  await nextLine("started");

  const results: Record<string, unknown> = {};
  const attempts: Record<string, number> = {};
  for (const [name, call] of Object.entries(calls)) {
    results[name] = await call.result;
    attempts[name] = call.attempts();
  }
  say({ phase: "done", results, attempts });
}

const limit = setTimeout(() => {
  say({ phase: "failed", error: `gave up after ${LIMIT_MS} ms` });
  process.exit(1);
}, LIMIT_MS);

main().then(
  () => {
    clearTimeout(limit);
    for (const made of clients) made.close();
    lines.close();
  },
  (error: unknown) => {
    say({ phase: "failed", error: String(error) });
    process.exit(1);
  },
);
