/**
 * One write past its deadline on the shared stream fails alone: driven by
 * tests/test_typescript.py, which freezes the daemon (SIGSTOP) and thaws it
 * (SIGCONT). Not a node:test file.
 *
 * Environment: TURNSTORE_TARGET, TURNSTORE_THREAD. Protocol (one line each):
 *  1. it opens the stream with one append and prints `{"phase":"ready"}`;
 *  2. the test freezes the daemon and writes `frozen`;
 *  3. it appends `late` (turn 1), which must fail with DeadlineExceededError
 *     after TIMEOUT_MS; then it sends an append (turn 1) and a finish (turn 2)
 *     on the same stream and prints `{"phase":"expired", ...}`;
 *  4. the test thaws the daemon; both must then succeed, and it prints
 *     `{"phase":"done", ...}` with what each call gave and how many streams
 *     the client opened, and exits 0 (1 with `{"phase":"failed"}` otherwise).
 */
import * as readline from "node:readline";

import { DeadlineExceededError, TurnstoreClient, newEnvelope } from "../src/index";

const TIMEOUT_MS = 1_500;

const client = new TurnstoreClient(process.env.TURNSTORE_TARGET ?? "", {
  timeoutMs: TIMEOUT_MS,
  writeMode: "stream",
});
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

async function main(): Promise<void> {
  const [first] = await client.events.append(thread, 1, newEnvelope({ type: "x", n: 0 }, 0));
  say({ phase: "ready" });
  await nextLine("frozen");
  const late = newEnvelope({ type: "x", n: 1 }, 1);
  const started = Date.now();
  let lateError = "resolved";
  try {
    await client.events.append(thread, 1, late);
  } catch (error) {
    lateError = error instanceof DeadlineExceededError ? "DeadlineExceededError" : String(error);
  }
  const waitedMs = Date.now() - started;
  const after = newEnvelope({ type: "x", n: 2 }, 2);
  const appending = client.events.append(thread, 1, after);
  const finishing = client.events.finishTurn(thread, 2);
  say({ phase: "expired", lateError, waitedMs });
  const [positions] = await Promise.all([appending, finishing]);
  say({
    phase: "done",
    first,
    lateId: late.eventId,
    afterId: after.eventId,
    afterPositions: positions,
    streams: client.appendStreamsOpened,
  });
}

main().then(
  () => {
    client.close();
    lines.close();
  },
  (error: unknown) => {
    say({ phase: "failed", error: String(error) });
    process.exit(1);
  },
);
