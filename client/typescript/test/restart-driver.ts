/**
 * Appends from many callers of one client over its shared AppendStream while
 * tests/test_typescript.py restarts the daemon under it. Not a node:test
 * file: the Python test runs it and drives it, one line at a time.
 *
 * Environment: TURNSTORE_TARGET (the daemon), TURNSTORE_THREAD (the thread to
 * write). Caller c appends PER_TURN events to turn c * 10 000 + 1, finishes
 * it, goes on with the next turn, and so on, so that appends and finishes are
 * both in flight when the daemon goes away. Protocol:
 *  1. once BEFORE writes are acknowledged, it prints `{"phase":"ready"}` and
 *     goes on appending; the test then stops the daemon and starts it again on
 *     the same data directory and socket;
 *  2. the test writes `restarted` to its stdin;
 *  3. once AFTER more appends are acknowledged, every caller finishes its
 *     turn and it prints `{"phase":"done", ...}`: every acknowledged event id
 *     with its position, each turn's event count read back once it was finished,
 *     how many streams the client opened, and how many calls were waiting
 *     when `restarted` came. Then it exits 0.
 * Any failed call makes it print the error and exit 1; it gives up after
 * LIMIT_MS.
 */
import * as readline from "node:readline";

import { TurnstoreClient, newEnvelope } from "../src/index";

const BEFORE = 40;
const AFTER = 40;
const PER_TURN = 5;
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

/** Finishes `turn` and reads back how many events it holds (finishTurn resolves with nothing). */
async function finished(turn: number): Promise<number> {
  await client.events.finishTurn(thread, turn);
  return (await client.events.getTurn(thread, turn))?.events.length ?? 0;
}

async function caller(index: number): Promise<[number, number][]> {
  const counts: [number, number][] = [];
  let turn = index * 10_000 + 1;
  for (let sequence = 0; ; sequence += 1) {
    if (ackCountAtRestart !== undefined && ackCount >= ackCountAtRestart + AFTER) {
      break;
    }
    if (Date.now() - started > LIMIT_MS) {
      throw new Error(`gave up after ${LIMIT_MS} ms (no "restarted" line, or no progress)`);
    }
    if (sequence > 0 && sequence % PER_TURN === 0) {
      inFlight += 1;
      counts.push([turn, await finished(turn)]);
      inFlight -= 1;
      turn += 1;
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
  counts.push([turn, await finished(turn)]);
  return counts;
}

async function main(): Promise<void> {
  const counts = Object.fromEntries(
    (await Promise.all(Array.from({ length: 8 }, (_, index) => caller(index)))).flat(),
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
