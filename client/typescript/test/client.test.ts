/**
 * The client against a real daemon: TURNSTORE_TARGET names it (tests/test_typescript.py
 * starts one). TURNSTORE_INTEROP, when set, holds what the Python client wrote
 * (checked here) and what this program must write (checked by Python afterwards).
 * TURNSTORE_WRITE_MODE ("stream" or "unary") is the clients' writeMode.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import {
  CursorOutOfRangeError,
  DeadlineExceededError,
  EventFormatError,
  EventIdConflictError,
  FailedPreconditionError,
  InvalidArgumentError,
  ResourceExhaustedError,
  SnapshotFormatError,
  TurnAlreadyFinishedError,
  TurnFinishedError,
  TurnstoreAdmin,
  TurnstoreClient,
  TurnstoreError,
  TurnstoreEventStore,
  TurnstoreHistoryStore,
  UnavailableError,
  VersionConflictError,
  checkSnapshot,
  checkTarget,
  envelopeFromJson,
  envelopeToJson,
  newEnvelope,
} from "../src/index";
import type {
  EventEnvelope,
  ReplayItem,
  StoredTurn,
  TurnstoreClientOptions,
  WriteMode,
} from "../src/index";

const target = process.env.TURNSTORE_TARGET;
if (target === undefined || target === "") {
  throw new Error("set TURNSTORE_TARGET to a running daemon (unix:/path or 127.0.0.1:PORT)");
}

interface InteropTurn {
  turn: number;
  finished: boolean;
  events: Record<string, unknown>[];
}

interface Interop {
  python_thread: string;
  python_turns: InteropTurn[];
  python_snapshot_key: string;
  python_snapshot: unknown;
  ts_thread: string;
  ts_turns: InteropTurn[];
  ts_snapshot_key: string;
  ts_snapshot: unknown;
}

const interop: Interop | undefined = process.env.TURNSTORE_INTEROP
  ? (JSON.parse(process.env.TURNSTORE_INTEROP) as Interop)
  : undefined;

/** TURNSTORE_WRITE_MODE picks how appends and finishes are sent; every test runs in both. */
const writeMode = (process.env.TURNSTORE_WRITE_MODE ?? "stream") as WriteMode;
const client = new TurnstoreClient(target, { timeoutMs: 15_000, writeMode });

before(async () => {
  await client.waitForReady(10_000);
});

after(() => {
  client.close();
});

function newThread(): string {
  return `ts-${randomUUID()}`;
}

function delta(text: string, sequence = 0): EventEnvelope {
  return newEnvelope({ type: "text_delta", message_id: "m1", delta: text }, sequence);
}

/** Rejects with the error `promise` rejects with, or fails when it resolves. */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  assert.fail("expected a rejection");
}

/** The next item of a replay iterator; fails when the replay ends first. */
async function next(items: AsyncIterator<ReplayItem>): Promise<ReplayItem> {
  const result = await items.next();
  assert.equal(result.done, false, "the replay ended early");
  return result.value as ReplayItem;
}

/** Waits until the daemon has no open replay (cancelled ones are freed asynchronously). */
async function noOpenReplays(): Promise<void> {
  const deadline = Date.now() + 10_000;
  let stats = await client.admin.stats();
  while (stats.openReplays > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    stats = await client.admin.stats();
  }
  assert.deepEqual(
    [stats.openReplays, stats.liveFollowers],
    [0, 0],
    "a cancelled replay was not freed",
  );
}

/** A turn in the interop form: flat JSON envelopes. */
function flat(turn: StoredTurn): InteropTurn {
  return {
    turn: turn.turn,
    finished: turn.finished,
    events: turn.events.map((stored) => envelopeToJson(stored.envelope)),
  };
}

describe("events", () => {
  test("append, finish and read turns back in order", async () => {
    const thread = newThread();
    const odd: EventEnvelope = newEnvelope(
      {
        type: "tool_call_start",
        name: "search",
        args: { query: "naïve café ☕ 😀", limit: 3, nested: [1, 2.5, null, true, { deep: "x" }] },
        empty: {},
        quote: 'he said "hi"\n\ttab',
      },
      7,
    );
    // Turn 2 first: ListTurns orders by turn number, not by commit.
    assert.deepEqual(await client.events.append(thread, 2, delta("later")), [0]);
    assert.deepEqual(
      await client.events.append(thread, 1, [delta("Hel", 0), delta("lo", 1)]),
      [1, 2],
    );
    assert.deepEqual(await client.events.append(thread, 1, odd), [3]);
    assert.equal(
      await client.events.finishTurn(thread, 1),
      undefined,
      "finishTurn resolves with nothing",
    );

    const one = await client.events.getTurn(thread, 1);
    assert.ok(one !== undefined);
    assert.equal(one.finished, true);
    assert.deepEqual(
      one.events.map((e) => e.position),
      [1, 2, 3],
    );
    assert.deepEqual(
      one.events.map((e) => e.envelope.event.delta),
      ["Hel", "lo", undefined],
    );
    assert.deepEqual(one.events[2]?.envelope, odd, "the JSON body round-trips exactly");
    assert.ok(one.events.every((e) => e.turn === 1 && e.storedAtUnixNanos > 0n));

    const turns = await client.events.getTurns(thread);
    assert.deepEqual(
      turns.map((t) => [t.turn, t.finished, t.events.length]),
      [
        [1, true, 3],
        [2, false, 1],
      ],
    );
    assert.deepEqual(turns[1]?.events[0]?.envelope.event, {
      type: "text_delta",
      message_id: "m1",
      delta: "later",
    });
    assert.equal(await client.events.eventCount(thread), 4);

    assert.equal(await client.events.getTurn(thread, 99), undefined);
    assert.equal(await client.events.getTurn(newThread(), 1), undefined);
    assert.deepEqual(await client.events.getTurns(newThread()), []);
    assert.equal(await client.events.clear(thread), undefined, "clear resolves with nothing");
    assert.equal(await client.events.eventCount(thread), 0);
  });

  test("a turn the daemon streams in several pieces is read back whole", async () => {
    const thread = newThread();
    const envelopes = Array.from({ length: 1300 }, (_, i) => delta(`d${i}`, i));
    const positions = await client.events.append(thread, 5, envelopes);
    assert.deepEqual(
      positions,
      envelopes.map((_, i) => i),
    );
    await client.events.finishTurn(thread, 5);
    const turns = await client.events.getTurns(thread);
    assert.equal(turns.length, 1);
    assert.equal(turns[0]?.finished, true);
    assert.deepEqual(
      turns[0]?.events.map((e) => e.envelope),
      envelopes,
    );
  });

  test("getEvents is turn by turn, getEventsSince skips an offset of it", async () => {
    const thread = newThread();
    const [hello, tool, rest] = [delta("hello"), delta("tool"), delta("rest")];
    // Committed as turn 1, turn 2, turn 1: turn order differs from commit order.
    await client.events.append(thread, 1, hello);
    await client.events.append(thread, 2, tool);
    await client.events.append(thread, 1, rest);
    assert.deepEqual(await client.events.getEvents(thread), [hello, rest, tool]);
    assert.deepEqual(await client.events.getEventsSince(thread, 0), [hello, rest, tool]);
    assert.deepEqual(await client.events.getEventsSince(thread, 2), [tool]);
    assert.deepEqual(await client.events.getEventsSince(thread, 3), [], "at the end: empty");
    assert.deepEqual(await client.events.getEventsSince(thread, 1000), [], "past the end: empty");
    assert.deepEqual(await client.events.getEvents(newThread()), [], "an unknown thread");
    assert.deepEqual(await client.events.getEventsSince(newThread(), 5), []);
    for (const offset of [-1, 1.5, Number.NaN, 2 ** 53]) {
      const refused = await rejection(client.events.getEventsSince(thread, offset));
      assert.ok(refused instanceof InvalidArgumentError, `${offset}: ${String(refused)}`);
      assert.equal(refused.code, undefined, "refused before any call");
    }
    const empty = await rejection(client.events.getEvents(""));
    assert.ok(empty instanceof InvalidArgumentError && empty.reason === "invalid_argument");

    // Many events (several messages of the stream) come back whole and in order.
    const many = Array.from({ length: 1300 }, (_, i) => delta(`d${i}`, i));
    await client.events.append(thread, 3, many);
    assert.deepEqual(await client.events.getEventsSince(thread, 3), many);
    await client.events.clear(thread);
    assert.deepEqual(await client.events.getEvents(thread), [], "cleared");
  });

  test("readEvents streams stored events in commit or turn order from an offset", async () => {
    const thread = newThread();
    const [a, b, c] = [delta("a"), delta("b"), delta("c")];
    await client.events.append(thread, 2, a);
    await client.events.append(thread, 1, b);
    await client.events.append(thread, 2, c);
    const read = async (options?: Parameters<typeof client.events.readEvents>[1]) => {
      const found: [number, number, string][] = [];
      for await (const stored of client.events.readEvents(thread, options)) {
        assert.ok(stored.storedAtUnixNanos > 0n);
        found.push([stored.position, stored.turn, stored.envelope.eventId]);
      }
      return found;
    };
    const commit: [number, number, string][] = [
      [0, 2, a.eventId],
      [1, 1, b.eventId],
      [2, 2, c.eventId],
    ];
    const turn = [commit[1], commit[0], commit[2]];
    assert.deepEqual(await read(), commit, "commit order by default");
    assert.deepEqual(await read({ order: "commit", offset: 1 }), commit.slice(1));
    assert.deepEqual(await read({ order: "turn" }), turn);
    assert.deepEqual(await read({ order: "turn", offset: 2 }), turn.slice(2));
    assert.deepEqual(await read({ offset: 3 }), [], "past the end: nothing");

    // Leaving the loop early ends the read; the client goes on working.
    for await (const stored of client.events.readEvents(thread)) {
      assert.equal(stored.position, 0);
      break;
    }
    assert.equal(await client.events.eventCount(thread), 3);

    const refusals = [
      read({ offset: -1 }),
      read({ offset: 2 ** 53 }),
      read({ order: "position" as "commit" }),
    ];
    for (const refusal of refusals) {
      const refused = await rejection(refusal);
      assert.ok(refused instanceof InvalidArgumentError && refused.code === undefined);
    }
  });

  test("a conditional append is stored only at the expected next position", async () => {
    const thread = newThread();
    const first = delta("a");
    assert.deepEqual(
      await client.events.append(thread, 1, first, { expectedNextPosition: 0 }),
      [0],
    );
    const batch = [delta("b"), delta("c")];
    assert.deepEqual(
      await client.events.append(thread, 1, batch, { expectedNextPosition: 1 }),
      [1, 2],
    );
    const stale = await rejection(
      client.events.append(thread, 1, delta("stale"), { expectedNextPosition: 1 }),
    );
    assert.ok(stale instanceof VersionConflictError, String(stale));
    assert.equal(stale.reason, "version_conflict");
    assert.equal(stale.currentVersion, 3, `the thread's next position (${writeMode} mode)`);
    // A retry of a stored envelope keeps its position, whatever the expectation.
    assert.deepEqual(
      await client.events.append(thread, 1, first, { expectedNextPosition: 0 }),
      [0],
    );
    assert.equal(await client.events.eventCount(thread), 3);
    const refused = await rejection(
      client.events.append(thread, 1, delta("x"), { expectedNextPosition: -1 }),
    );
    assert.ok(refused instanceof InvalidArgumentError && refused.code === undefined);
  });

  test("readEvents reads from the end with a limit; lastEvents in append order", async () => {
    const thread = newThread();
    for (let n = 0; n < 6; n += 1) {
      await client.events.append(thread, 1, delta(String(n)));
    }
    const positions = async (options: Parameters<typeof client.events.readEvents>[1]) => {
      const found: number[] = [];
      for await (const stored of client.events.readEvents(thread, options)) {
        found.push(stored.position);
      }
      return found;
    };
    assert.deepEqual(await positions({ newestFirst: true, limit: 2 }), [5, 4]);
    assert.deepEqual(await positions({ newestFirst: true, offset: 4 }), [1, 0]);
    assert.deepEqual(await positions({ offset: 2, limit: 3 }), [2, 3, 4]);
    assert.deepEqual(await positions({ newestFirst: true, offset: 6 }), []);
    const last = await client.events.lastEvents(thread, 3);
    assert.deepEqual(
      last.map((stored) => [stored.position, stored.envelope.event.delta]),
      [
        [3, "3"],
        [4, "4"],
        [5, "5"],
      ],
    );
    assert.deepEqual(await client.events.lastEvents(thread, 0), []);
    assert.deepEqual(await client.events.lastEvents(newThread(), 4), []);
    const turnOrder = await rejection(positions({ order: "turn", newestFirst: true }));
    assert.ok(turnOrder instanceof InvalidArgumentError && turnOrder.code === undefined);
  });

  test("errors are typed by the daemon's reason", async () => {
    const thread = newThread();
    const first = delta("a");
    await client.events.append(thread, 1, first);
    await client.events.finishTurn(thread, 1);

    const finished = await rejection(client.events.append(thread, 1, delta("late")));
    assert.ok(finished instanceof TurnFinishedError, String(finished));
    assert.ok(finished instanceof FailedPreconditionError && finished instanceof TurnstoreError);
    assert.equal(finished.reason, "turn_finished");
    assert.equal(finished.code, 9); // FAILED_PRECONDITION
    assert.ok(finished.cause !== undefined);

    assert.ok(
      (await rejection(client.events.finishTurn(thread, 1))) instanceof TurnAlreadyFinishedError,
    );
    // An id already stored in this turn is idempotent; in another turn it conflicts.
    assert.deepEqual(await client.events.append(thread, 1, first), [0]);
    assert.ok(
      (await rejection(client.events.append(thread, 2, first))) instanceof EventIdConflictError,
    );

    const empty = await rejection(client.events.append("", 1, delta("x")));
    assert.ok(
      empty instanceof InvalidArgumentError && empty.reason === "invalid_argument",
      String(empty),
    );
    assert.ok(
      (await rejection(client.events.append(thread, 3, []))) instanceof InvalidArgumentError,
    );
    // Refused before any call: no code.
    const negative = await rejection(client.events.append(thread, -1, delta("x")));
    assert.ok(negative instanceof InvalidArgumentError && negative.code === undefined);
    const typeless = await rejection(client.events.append(thread, 3, newEnvelope({ type: "" })));
    assert.ok(typeless instanceof EventFormatError);
    assert.equal(await client.events.eventCount(thread), 1, "nothing refused was stored");
  });

  test("the flat JSON form round-trips", () => {
    const envelope = delta("x", 3);
    assert.deepEqual(
      envelopeFromJson(JSON.parse(JSON.stringify(envelopeToJson(envelope)))),
      envelope,
    );
    assert.throws(
      () => envelopeFromJson({ event_id: "e", sequence: 0, timestamp: "t" }),
      EventFormatError,
    );
  });

  test("admin.stats() counts what the daemon holds, with the Python client's fields", async () => {
    // The names of docs/clients.md, the same in the three clients.
    assert.ok(client.admin instanceof TurnstoreAdmin);
    assert.ok(client.events instanceof TurnstoreEventStore);
    assert.ok(client.history("k") instanceof TurnstoreHistoryStore);
    const before = await client.admin.stats();
    const thread = newThread();
    await client.events.append(thread, 1, [delta("a", 0), delta("b", 1)]);
    await client.events.finishTurn(thread, 1);
    const after = await client.admin.stats();
    assert.deepEqual(
      [after.threads - before.threads, after.events - before.events],
      [1, 2],
      "this test's thread and events are counted",
    );
    assert.equal(after.finishedTurns - before.finishedTurns, 1);
    assert.equal(typeof after.retentionEnabled, "boolean");
    assert.equal(typeof after.retentionLastError, "string");
    assert.ok(after.writeLimitBytes > 0 && after.usedBytes > 0, JSON.stringify(after));
    assert.equal(Object.keys(after).length, 22, "every field of GetStatsResponse");
  });

  test("only loopback targets without allowRemote", () => {
    checkTarget("unix:/tmp/x.sock");
    checkTarget("127.0.0.1:7070");
    checkTarget("[::1]:7070");
    checkTarget("localhost:1");
    assert.throws(() => checkTarget("10.0.0.1:7070"), InvalidArgumentError);
    assert.throws(() => checkTarget("no-port"), InvalidArgumentError);
    checkTarget("10.0.0.1:7070", true);
  });
});

describe("writes over one shared stream", () => {
  test(`the client writes in ${writeMode} mode`, () => {
    assert.ok(writeMode === "stream" || writeMode === "unary", writeMode);
    assert.equal(client.writeMode, writeMode);
    assert.throws(
      () => new TurnstoreClient(target, { writeMode: "bulk" as WriteMode }),
      InvalidArgumentError,
    );
  });

  test("token, tls and retry options are checked before any call", () => {
    const refused = (options: TurnstoreClientOptions, where = "127.0.0.1:7070"): string => {
      try {
        new TurnstoreClient(where, options).close();
      } catch (error) {
        assert.ok(error instanceof InvalidArgumentError, String(error));
        return error.message;
      }
      return assert.fail(`accepted ${JSON.stringify(options)}`);
    };
    assert.match(refused({ token: "" }), /token/);
    assert.match(refused({ token: "naïve" }), /token/);
    assert.match(refused({ token: "padded " }), /token/);
    assert.match(refused({ tls: { ca: "/nonexistent/ca.pem" } }), /tls\.ca: cannot read/);
    assert.match(refused({ tls: { ca: Buffer.from("not pem") } }), /PEM/);
    assert.match(refused({ tls: { ca: "/nonexistent/ca.pem" } }, "unix:/tmp/x.sock"), /unix/);
    assert.match(
      refused({ tls: { ca: Buffer.from("-----BEGIN x"), cert: "c.pem" } }),
      /go together/,
    );
    assert.match(refused({ retry: { attempts: 0 } }), /attempts/);
    assert.match(refused({ retry: { attempts: 1.5 } }), /attempts/);
    assert.match(refused({ retry: { maxBackoffMs: -1 } }), /maxBackoffMs/);
    assert.match(refused({}, "10.0.0.1:7070"), /loopback/);
    // TLS makes a remote host acceptable without allowRemote (nothing is sent yet).
    const ca = Buffer.from("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n");
    new TurnstoreClient("10.0.0.1:7070", { tls: { ca } }).close();
  });

  test("a closed client does not retry", async () => {
    let retries = 0;
    const own = new TurnstoreClient(target, {
      writeMode,
      retry: { onRetry: () => (retries += 1) },
    });
    await own.events.eventCount(newThread());
    own.close();
    const closed = await rejection(own.events.eventCount(newThread()));
    assert.ok(closed instanceof UnavailableError, String(closed));
    assert.equal(retries, 0);
  });

  test("concurrent callers get distinct consecutive positions", async () => {
    const own = new TurnstoreClient(target, { writeMode });
    try {
      const thread = newThread();
      const callers = 32;
      const perCaller = 8;
      const acked = new Map<string, number>();
      await Promise.all(
        Array.from({ length: callers }, async (_, caller) => {
          let previous = -1;
          for (let i = 0; i < perCaller; i += 1) {
            const envelope = delta(`${caller}.${i}`, i);
            const [position] = await own.events.append(thread, 1, envelope);
            assert.ok(position !== undefined && position > previous, "a caller's positions grow");
            previous = position;
            acked.set(envelope.eventId, position);
          }
        }),
      );
      const total = callers * perCaller;
      assert.deepEqual(
        [...acked.values()].sort((a, b) => a - b),
        Array.from({ length: total }, (_, i) => i),
      );
      await own.events.finishTurn(thread, 1);
      const [turn] = await own.events.getTurns(thread);
      assert.deepEqual(
        turn?.events.map((e) => [e.envelope.eventId, e.position]),
        [...acked.entries()].sort((a, b) => a[1] - b[1]),
        "each event is stored once, at the position its call resolved with",
      );
      assert.equal(own.appendStreamsOpened, writeMode === "stream" ? 1 : 0);
    } finally {
      own.close();
    }
  });

  test("a rejected write fails only its own call", async () => {
    const own = new TurnstoreClient(target, { writeMode });
    try {
      const thread = newThread();
      assert.deepEqual(await own.events.append(thread, 1, delta("closed")), [0]);
      await own.events.finishTurn(thread, 1);
      const good = Array.from({ length: 12 }, (_, i) =>
        own.events.append(thread, 2, delta(`${i}`)),
      );
      const bad = [
        own.events.append(thread, 1, delta("late")),
        own.events.finishTurn(thread, 1),
        own.events.append("", 2, delta("no thread")),
        own.events.append(thread, 2, []),
        // protobufjs encodes a short string itself, a lone surrogate as
        // invalid UTF-8: the daemon cannot decode the item and acknowledges
        // it with request_id 0, which still fails only this call.
        own.events.append("t\uD800", 2, delta("lone surrogate")),
      ];
      const more = own.events.append(thread, 2, [delta("x"), delta("y")]);
      const settled = await Promise.allSettled([...good, ...bad]);
      const appended = [...settled.slice(0, good.length), ...(await Promise.allSettled([more]))];
      const errors = settled.slice(good.length, good.length + bad.length).map((result) => {
        assert.equal(result.status, "rejected");
        return result.status === "rejected" ? (result.reason as unknown) : undefined;
      });
      assert.ok(errors[0] instanceof TurnFinishedError, String(errors[0]));
      assert.equal(errors[0].code, 9);
      assert.equal(errors[0].reason, "turn_finished");
      assert.ok(errors[0].cause !== undefined);
      assert.ok(errors[1] instanceof TurnAlreadyFinishedError, String(errors[1]));
      assert.ok(errors[2] instanceof InvalidArgumentError, String(errors[2]));
      assert.ok(errors[3] instanceof InvalidArgumentError, String(errors[3]));
      assert.ok(errors[4] instanceof InvalidArgumentError, String(errors[4]));
      assert.match(errors[4].message, /cannot be decoded/);
      const positions = appended.flatMap((result) => {
        assert.equal(result.status, "fulfilled", String(result));
        return result.status === "fulfilled" ? (result.value as number[]) : [];
      });
      assert.deepEqual(
        positions.sort((a, b) => a - b),
        Array.from({ length: 14 }, (_, i) => i + 1),
      );
      // The stream went on: later writes on it succeed.
      await own.events.finishTurn(thread, 2);
      assert.equal((await own.events.getTurn(thread, 2))?.events.length, 14);
      assert.equal(own.appendStreamsOpened, writeMode === "stream" ? 1 : 0);
    } finally {
      own.close();
    }
  });

  test("a batch too large for one message fails only its own call", async () => {
    const own = new TurnstoreClient(target, { writeMode });
    try {
      const thread = newThread();
      const huge = "x".repeat(1_048_000);
      const tooMany = Array.from({ length: 66 }, (_, i) => delta(huge, i)); // over 64 MiB
      const [large, ...small] = await Promise.allSettled([
        own.events.append(thread, 1, tooMany),
        ...Array.from({ length: 8 }, (_, i) => own.events.append(thread, 1, delta(`${i}`))),
      ]);
      assert.equal(large?.status, "rejected");
      const error: unknown = large?.status === "rejected" ? large.reason : undefined;
      assert.ok(error instanceof ResourceExhaustedError, String(error));
      assert.deepEqual(
        small.map((result) => result.status),
        Array.from({ length: 8 }, () => "fulfilled"),
      );
      assert.equal(await own.events.eventCount(thread), 8);
      assert.equal(own.appendStreamsOpened, writeMode === "stream" ? 1 : 0);
    } finally {
      own.close();
    }
  });

  test("a write past the client's deadline fails with DeadlineExceededError", async () => {
    const hurried = new TurnstoreClient(target, { timeoutMs: 1, writeMode });
    try {
      const thread = newThread();
      const many = Array.from({ length: 2000 }, (_, i) => delta(`d${i}`, i));
      const late = await rejection(hurried.events.append(thread, 1, many));
      assert.ok(late instanceof DeadlineExceededError, String(late));
      assert.equal(late.code, 4); // DEADLINE_EXCEEDED
      if (writeMode === "stream") {
        // Sent before the deadline, so still committed: the stream is not torn down for it.
        const deadline = Date.now() + 10_000;
        while ((await client.events.eventCount(thread)) < many.length && Date.now() < deadline) {
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        assert.equal(await client.events.eventCount(thread), many.length);
        assert.equal(hurried.appendStreamsOpened, 1);
      }
    } finally {
      hurried.close();
    }
  });

  test("close() lets writes already sent finish; later ones fail at once", async () => {
    const own = new TurnstoreClient(target, { writeMode });
    const thread = newThread();
    await own.events.append(thread, 1, delta("first"));
    const sent = Array.from({ length: 10 }, (_, i) => own.events.append(thread, 1, delta(`${i}`)));
    own.close();
    const settled = await Promise.allSettled(sent);
    if (writeMode === "stream") {
      // Half-closed, not cancelled: the daemon acknowledges everything sent.
      const positions = settled.flatMap((result) => {
        assert.equal(result.status, "fulfilled", String(result));
        return result.status === "fulfilled" ? result.value : [];
      });
      assert.deepEqual(
        positions.sort((a, b) => a - b),
        Array.from({ length: 10 }, (_, i) => i + 1),
      );
      const closed = await rejection(own.events.append(thread, 1, delta("after close")));
      assert.ok(closed instanceof UnavailableError, String(closed));
      assert.equal(await client.events.eventCount(thread), 11);
    } else {
      // Unary calls not started when the channel closes fail; none is stored twice.
      const stored = settled.filter((result) => result.status === "fulfilled").length;
      for (const result of settled) {
        if (result.status === "rejected") {
          assert.ok(result.reason instanceof UnavailableError, String(result.reason));
        }
      }
      const count = await client.events.eventCount(thread);
      assert.ok(
        count >= 1 + stored && count <= 11,
        `${count} events stored, ${stored} acknowledged`,
      );
    }
  });
});

describe("replay", () => {
  test("a follower receives later events and the finish marker, then is cancelled", async () => {
    const thread = newThread();
    await client.events.append(thread, 1, delta("before"));
    const replay = client.events.replay(thread, { follow: true, timeoutMs: 30_000 });
    const items = replay[Symbol.asyncIterator]();

    const stored = await next(items);
    assert.equal(stored.kind, "event");
    assert.equal(stored.kind === "event" && stored.event.envelope.event.delta, "before");
    assert.deepEqual(await next(items), { kind: "caught_up", nextPosition: 1 });

    // Appended after the follower caught up: it must see them live.
    const later = [delta("live-1"), delta("live-2")];
    const pending = next(items);
    await client.events.append(thread, 2, later);
    const received: ReplayItem[] = [await pending];
    while (received.length < 2) {
      received.push(await next(items));
    }
    assert.deepEqual(
      received.map((item) =>
        item.kind === "event" ? [item.event.position, item.event.turn, item.event.envelope] : item,
      ),
      [
        [1, 2, later[0]],
        [2, 2, later[1]],
      ],
    );
    await client.events.finishTurn(thread, 2);
    assert.deepEqual(await next(items), {
      kind: "turn_finished",
      turn: 2,
      eventCount: 2,
      lastPosition: 2,
    });
    assert.equal(replay.lastPosition, 2);
    assert.ok(replay.epoch !== undefined && replay.epoch > 0);

    // Cancelled while waiting: the iteration ends without an error.
    assert.equal((await client.admin.stats()).liveFollowers, 1);
    const waiting = items.next();
    replay.close();
    assert.deepEqual(await waiting, { done: true, value: undefined });
    await noOpenReplays();

    // Resuming after the last position sees only the events that came since
    // (and, as the contract allows, again the finish marker right after it).
    await client.events.append(thread, 3, delta("after"));
    const resumed: string[] = [];
    for await (const item of client.events.replay(thread, {
      after: replay.lastPosition,
      epoch: replay.epoch,
    })) {
      resumed.push(item.kind === "event" ? `event ${item.event.position}` : item.kind);
    }
    assert.deepEqual(resumed, ["turn_finished", "event 3", "caught_up"]);
  });

  test("a cursor past the end of the thread is refused, never answered caught up", async () => {
    const thread = newThread();
    await client.events.append(thread, 1, [delta("a"), delta("b"), delta("c")]);
    const whole = client.events.replay(thread);
    for await (const item of whole) {
      assert.notEqual(item.kind, "thread_cleared");
    }
    assert.equal(whole.lastPosition, 2);
    const pastTheEnd = [
      { after: 500 },
      { after: 3, epoch: whole.epoch },
      { after: 500, epoch: whole.epoch, follow: true, timeoutMs: 30_000 },
    ];
    for (const options of pastTheEnd) {
      const refused = await rejection(
        (async () => {
          for await (const item of client.events.replay(thread, options)) {
            assert.fail(`unexpected ${item.kind} for ${JSON.stringify(options)}`);
          }
        })(),
      );
      assert.ok(refused instanceof CursorOutOfRangeError, String(refused));
      assert.equal(refused.reason, "cursor_out_of_range");
      assert.match(refused.message, /has 3 events/);
    }
    // The last position delivered is the end, not past it.
    const resumed: ReplayItem[] = [];
    for await (const item of client.events.replay(thread, { after: 2, epoch: whole.epoch })) {
      resumed.push(item);
    }
    assert.deepEqual(resumed, [{ kind: "caught_up", nextPosition: 3 }]);
  });

  test("markers: empty finished turns, thread cleared, abort signal, daemon errors", async () => {
    const thread = newThread();
    await client.events.finishTurn(thread, 4);
    const items: ReplayItem[] = [];
    for await (const item of client.events.replay(thread)) {
      items.push(item);
    }
    assert.deepEqual(items, [
      { kind: "turn_finished", turn: 4, eventCount: 0, lastPosition: undefined },
      { kind: "caught_up", nextPosition: 0 },
    ]);

    const follower = client.events.replay(thread, { follow: true })[Symbol.asyncIterator]();
    await next(follower); // turn_finished
    await next(follower); // caught_up
    const pending = next(follower);
    await client.events.clear(thread);
    assert.equal((await pending).kind, "thread_cleared");
    assert.equal((await follower.next()).done, true, "the replay ends after thread_cleared");

    const controller = new AbortController();
    const seen: string[] = [];
    for await (const item of client.events.replay(newThread(), {
      follow: true,
      signal: controller.signal,
    })) {
      seen.push(item.kind);
      controller.abort();
    }
    assert.deepEqual(seen, ["caught_up"]);

    // Leaving a loop early cancels the call too.
    for await (const item of client.events.replay(thread, { follow: true })) {
      assert.equal(item.kind, "caught_up");
      break;
    }
    await noOpenReplays();
    // A replay cancelled before it started never calls the daemon.
    const aborted = client.events.replay(thread, { follow: true, signal: AbortSignal.abort() });
    assert.equal((await aborted[Symbol.asyncIterator]().next()).done, true);

    const bad = await rejection(
      (async () => {
        for await (const item of client.events.replay(thread, { fromTurn: 5, toTurn: 1 })) {
          assert.fail(`unexpected ${item.kind}`);
        }
      })(),
    );
    assert.ok(bad instanceof InvalidArgumentError, String(bad));
  });
});

describe("history", () => {
  test("load before save, save and load round trip, versions", async () => {
    const history = client.history(`ts-conversation-${randomUUID()}`);
    assert.equal(await history.load(), undefined);
    const snapshot = {
      version: 1 as const,
      messages: [
        { role: "user", content: "héllo 😀" },
        { role: "assistant", content: [{ type: "text", text: "hi" }] },
      ],
      pinned: [true, false],
    };
    assert.equal(await history.save(snapshot, { expectedVersion: 0 }), 1);
    assert.deepEqual(await history.load(), snapshot);

    const conflict = await rejection(history.save(snapshot, { expectedVersion: 0 }));
    assert.ok(conflict instanceof VersionConflictError, String(conflict));
    assert.equal(conflict.currentVersion, 1);
    const changed = {
      ...snapshot,
      messages: [...snapshot.messages, "third"],
      pinned: [true, false, false],
    };
    assert.equal(await history.save(changed, { expectedVersion: 1 }), 2);
    const loaded = await history.loadVersioned();
    assert.equal(loaded?.version, 2);
    assert.deepEqual(loaded?.snapshot, changed);
    assert.deepEqual((await history.loadVersioned(1))?.snapshot, snapshot);

    const kept = await history.listVersions();
    assert.deepEqual(
      kept.map((v) => [v.version, v.contentType]),
      [
        [2, "application/json"],
        [1, "application/json"],
      ],
      "newest first",
    );
    assert.equal(kept[1]?.sizeBytes, Buffer.byteLength(JSON.stringify(snapshot)));
    assert.ok(kept.every((v) => v.savedAtUnixNanos > 0n));
    assert.ok((kept[0]?.savedAtUnixNanos ?? 0n) >= (kept[1]?.savedAtUnixNanos ?? 0n));
    const mismatched = await rejection(history.save({ version: 1, messages: [1], pinned: [] }));
    assert.ok(mismatched instanceof SnapshotFormatError);
    assert.equal(await history.delete(), 2);
    assert.equal(await history.load(), undefined);
    assert.deepEqual(await history.listVersions(), [], "deleted: no versions");
    assert.deepEqual(await client.history(`ts-unknown-${randomUUID()}`).listVersions(), []);
  });
});

describe("interop with the Python client", { skip: interop === undefined }, () => {
  test("reads what Python wrote", async () => {
    assert.ok(interop !== undefined);
    const turns = await client.events.getTurns(interop.python_thread);
    assert.deepEqual(turns.map(flat), interop.python_turns);
    assert.deepEqual(
      await client.history(interop.python_snapshot_key).load(),
      interop.python_snapshot,
    );
  });

  test("writes what Python reads back", async () => {
    assert.ok(interop !== undefined);
    for (const turn of interop.ts_turns) {
      const [first, ...rest] = turn.events.map(envelopeFromJson);
      assert.ok(first !== undefined);
      await client.events.append(interop.ts_thread, turn.turn, first);
      if (rest.length > 0) {
        await client.events.append(interop.ts_thread, turn.turn, rest);
      }
      if (turn.finished) {
        await client.events.finishTurn(interop.ts_thread, turn.turn);
      }
    }
    const snapshot = checkSnapshot(interop.ts_snapshot);
    assert.equal(await client.history(interop.ts_snapshot_key).save(snapshot), 1);
  });
});
