/**
 * Runs the same calls under several connection settings (token, TLS, mutual
 * TLS) and prints what each gave: tests/test_typescript.py starts the daemon
 * (with --auth-token-file, --tls-cert/--tls-key, --tls-client-ca) and checks
 * the outcomes. Not a node:test file.
 *
 * Environment: TURNSTORE_CASES, a JSON list of cases, each
 * `{ name, target, token?, tls?: { ca, cert?, key?, serverName?, buffers? },
 * retry? }` (`buffers`: pass the PEM files' contents as Buffers instead of
 * their paths). For each case, one client per write mode makes, in order:
 * a stream append, a unary append, a finish (over the stream), listTurns,
 * a replay, a save, a load and stats, on a thread and key of its own. It
 * prints one JSON line per case, `{ case, results: { call: outcome } }`,
 * where an outcome is `{ ok: value }` or `{ error: class, code, reason }`,
 * and exits 0 (1 if the driver itself failed).
 */
import { randomUUID } from "node:crypto";
import * as fs from "node:fs";

import { TurnstoreClient, TurnstoreError, newEnvelope } from "../src/index";
import type { ClientTls, RetryPolicy, TurnstoreClientOptions } from "../src/index";

interface Case {
  name: string;
  target: string;
  token?: string;
  tls?: { ca: string; cert?: string; key?: string; serverName?: string; buffers?: boolean };
  retry?: Partial<RetryPolicy>;
}

type Outcome =
  | { ok: unknown }
  | { error: string; code: number | undefined; reason: string | undefined; message: string };

async function outcome(call: () => Promise<unknown>): Promise<Outcome> {
  try {
    return { ok: await call() };
  } catch (error) {
    if (error instanceof TurnstoreError) {
      return { error: error.name, code: error.code, reason: error.reason, message: error.message };
    }
    return { error: String(error), code: undefined, reason: undefined, message: String(error) };
  }
}

function tlsOf(spec: Case["tls"]): ClientTls | undefined {
  if (spec === undefined) {
    return undefined;
  }
  const source = (path: string | undefined): string | Buffer | undefined =>
    path === undefined ? undefined : spec.buffers === true ? fs.readFileSync(path) : path;
  return {
    ca: source(spec.ca) ?? "",
    cert: source(spec.cert),
    key: source(spec.key),
    serverName: spec.serverName,
  };
}

async function run(spec: Case): Promise<Record<string, Outcome>> {
  const options: TurnstoreClientOptions = {
    timeoutMs: 10_000,
    token: spec.token,
    tls: tlsOf(spec.tls),
    retry: spec.retry,
  };
  const streamed = new TurnstoreClient(spec.target, { ...options, writeMode: "stream" });
  const unary = new TurnstoreClient(spec.target, { ...options, writeMode: "unary" });
  const thread = `secure-${randomUUID()}`;
  const results: Record<string, Outcome> = {};
  try {
    results.streamAppend = await outcome(() =>
      streamed.events.append(thread, 1, newEnvelope({ type: "x", n: 0 }, 0)),
    );
    results.unaryAppend = await outcome(() =>
      unary.events.append(thread, 1, newEnvelope({ type: "x", n: 1 }, 1)),
    );
    results.finish = await outcome(async () => {
      await streamed.events.finishTurn(thread, 1); // resolves with nothing
      return "finished";
    });
    results.listTurns = await outcome(async () => {
      const turns: [number, boolean, number][] = [];
      for await (const turn of streamed.events.listTurns(thread)) {
        turns.push([turn.turn, turn.finished, turn.events.length]);
      }
      return turns;
    });
    results.replay = await outcome(async () => {
      const kinds: string[] = [];
      for await (const item of streamed.events.replay(thread)) {
        kinds.push(item.kind);
      }
      return kinds;
    });
    const history = streamed.history(`secure-${randomUUID()}`);
    results.save = await outcome(() =>
      history.save({ version: 1, messages: ["over a secured channel"], pinned: [false] }),
    );
    results.load = await outcome(async () => (await history.load())?.messages);
    results.stats = await outcome(async () => typeof (await streamed.admin.stats()).mapSizeBytes);
  } finally {
    streamed.close();
    unary.close();
  }
  return results;
}

async function main(): Promise<void> {
  const cases = JSON.parse(process.env.TURNSTORE_CASES ?? "[]") as Case[];
  for (const spec of cases) {
    process.stdout.write(`${JSON.stringify({ case: spec.name, results: await run(spec) })}\n`);
  }
}

main().catch((error: unknown) => {
  process.stdout.write(`${JSON.stringify({ case: "driver", failed: String(error) })}\n`);
  process.exit(1);
});
