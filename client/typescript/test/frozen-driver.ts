/**
 * No hung agents: every kind of call on a frozen daemon fails within its
 * deadline, a follower fails once a keepalive ping goes unanswered, and an
 * unreachable daemon is named with the cause. Driven by
 * tests/test_deadlines.py, which freezes the daemon (SIGSTOP) and thaws it
 * (SIGCONT). Not a node:test file.
 *
 * Environment: TURNSTORE_TARGET, TURNSTORE_THREAD, TURNSTORE_UNREACHABLE (an
 * address nothing listens on). Protocol (one JSON line each):
 *  1. it tries the unreachable address, warms up its clients (an append in
 *     each write mode, a load, a follower that caught up) and prints
 *     `{"phase":"ready", "unreachable": [...], "defaultTimeoutMs": ...}`;
 *  2. the test freezes the daemon and writes `frozen`;
 *  3. it makes every call at once, each with a client deadline of
 *     TIMEOUT_MS, and prints `{"phase":"expired", "calls": {name: {error,
 *     waitedMs}}}` once all failed, the follower included;
 *  4. the test thaws the daemon and writes `thawed`; it closes its clients
 *     and prints `{"phase":"done"}` (`{"phase":"failed"}` and exit 1 on
 *     anything unexpected).
 */
import * as readline from "node:readline";

import { DEFAULT_TIMEOUT_MS, TurnstoreClient, newEnvelope } from "../src/index";
import type { ReplayItem } from "../src/index";

const TIMEOUT_MS = 2_000;

const target = process.env.TURNSTORE_TARGET ?? "";
const thread = process.env.TURNSTORE_THREAD ?? "";
const lines = readline.createInterface({ input: process.stdin });

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

interface Outcome {
  error: string;
  message: string;
  waitedMs: number;
}

/** How `call` failed (its error's class and message) and after how long. */
async function outcome(call: () => Promise<unknown>): Promise<Outcome> {
  const started = Date.now();
  try {
    await call();
    return { error: "resolved", message: "", waitedMs: Date.now() - started };
  } catch (error) {
    return {
      error: error instanceof Error ? error.constructor.name : String(error),
      message: error instanceof Error ? error.message : "",
      waitedMs: Date.now() - started,
    };
  }
}

async function drain(replay: AsyncIterable<ReplayItem>): Promise<void> {
  for await (const item of replay) {
    void item;
  }
}

async function main(): Promise<void> {
  const nowhere = process.env.TURNSTORE_UNREACHABLE ?? "";
  const unreachable: Outcome[] = [];
  for (const writeMode of ["stream", "unary"] as const) {
    const lost = new TurnstoreClient(nowhere, { retry: { attempts: 1 }, writeMode });
    unreachable.push(await outcome(() => lost.events.finishTurn(thread, 1)));
    unreachable.push(await outcome(() => lost.events.eventCount(thread)));
    lost.close();
  }

  const options = { timeoutMs: TIMEOUT_MS };
  const streamed = new TurnstoreClient(target, { ...options, writeMode: "stream" });
  const unary = new TurnstoreClient(target, { ...options, writeMode: "unary" });
  // Pings every 10 s (the most often the daemon allows), 1 s to answer.
  const pinging = new TurnstoreClient(target, {
    channelOptions: { "grpc.keepalive_time_ms": 10_000, "grpc.keepalive_timeout_ms": 1_000 },
  });
  await streamed.events.append(thread, 1, newEnvelope({ type: "x", n: 0 }, 0));
  await unary.events.append(thread, 1, newEnvelope({ type: "x", n: 1 }, 1));
  const history = streamed.history(`frozen-${thread}`);
  await history.load();
  const follower = pinging.events.replay(thread, { follow: true })[Symbol.asyncIterator]();
  for (;;) {
    const item = await follower.next();
    if (item.done === true || item.value.kind === "caught_up") {
      break;
    }
  }
  say({ phase: "ready", unreachable, defaultTimeoutMs: DEFAULT_TIMEOUT_MS });

  await nextLine("frozen");
  const calls: Record<string, () => Promise<unknown>> = {
    streamAppend: () => streamed.events.append(thread, 1, newEnvelope({ type: "x", n: 2 }, 2)),
    streamFinish: () => streamed.events.finishTurn(thread, 2),
    unaryAppend: () => unary.events.append(thread, 1, newEnvelope({ type: "x", n: 3 }, 3)),
    unaryFinish: () => unary.events.finishTurn(thread, 3),
    load: () => history.load(),
    catchUpReplay: () => drain(streamed.events.replay(thread)),
    follower: () => follower.next(),
  };
  const entries = Object.entries(calls);
  const outcomes = await Promise.all(entries.map(([, call]) => outcome(call)));
  say({
    phase: "expired",
    calls: Object.fromEntries(entries.map(([name], i) => [name, outcomes[i]])),
  });

  await nextLine("thawed");
  for (const client of [streamed, unary, pinging]) {
    client.close();
  }
  say({ phase: "done" });
}

main().then(
  () => {
    lines.close();
  },
  (error: unknown) => {
    say({ phase: "failed", error: String(error) });
    process.exit(1);
  },
);
