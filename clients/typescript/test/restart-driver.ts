/**
 * Appends from many callers of one client over its shared AppendStream while
 * tests/test_typescript.py restarts the daemon under it. Not a node:test
 * file: the Python test runs it and drives it, one line at a time.
 *
 * Environment: TURNSTORE_TARGET (the daemon), TURNSTORE_THREAD (the thread to
 * write; caller c appends to turn c + 1). Protocol:
 *  1. once BEFORE writes are acknowledged, it prints `{"phase":"ready"}` and
 *     goes on appending; the test then stops the daemon and starts it again on
 *     the same data directory and socket;
 *  2. the test writes `restarted` to its stdin;
 *  3. once AFTER more writes are acknowledged, every caller finishes its turn
 *     and it prints `{"phase":"done", ...}`: every acknowledged event id with
 *     its position, each turn's event count, how many streams the client opened,
 *     and how many calls were waiting when `restarted` came. Then it exits 0.
 * Any failed call makes it print the error and exit 1; it gives up after
 * LIMIT_MS.
 */
import * as readline from "node:readline";

import { TurnstoreClient, newEnvelope } from "../src/index";

const BEFORE = 40;
const AFTER = 40;
const LIMIT_MS = 60_000;

const target = process.env.TURNSTORE_TARGET ?? "";
const thread = process.env.TURNSTORE_THREAD ?? "";
const client = new TurnstoreClient(target, { writeMode: "stream" });
const started = Date.now();

const acked: Record<string, number> = {};
let ackCount = 0;
let inFlight = 0;
/** Acks counted when `restarted` came; undefined before. */
let ackCountAtRestart: number | undefined;
let inFlightAtRestart = 0;

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (line.trim() === "restarted" && ackCountAtRestart === undefined) {
    ackCountAtRestart = ackCount;
    inFlightAtRestart = inFlight;
  }
});

function say(message: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

async function caller(index: number): Promise<[number, number]> {
  const turn = index + 1;
  for (let sequence = 0; ; sequence += 1) {
    if (ackCountAtRestart !== undefined && ackCount >= ackCountAtRestart + AFTER) {
      break;
    }
    if (Date.now() - started > LIMIT_MS) {
      throw new Error(`gave up after ${LIMIT_MS} ms (no "restarted" line, or no progress)`);
    }
    const envelope = newEnvelope({ type: "text_delta", delta: `${index}.${sequence}` }, sequence);
    inFlight += 1;
    const [position] = await client.events.append(thread, turn, envelope);
    inFlight -= 1;
    if (position === undefined) {
      throw new Error("an append resolved without a position");
    }
    acked[envelope.eventId] = position;
    ackCount += 1;
    if (ackCount === BEFORE) {
      say({ phase: "ready" });
    }
  }
  return [turn, await client.events.finishTurn(thread, turn)];
}

async function main(): Promise<void> {
  const counts = Object.fromEntries(
    await Promise.all(Array.from({ length: 8 }, (_, index) => caller(index))),
  );
  say({
    phase: "done",
    acked,
    counts,
    streams: client.appendStreamsOpened,
    inFlightAtRestart,
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
