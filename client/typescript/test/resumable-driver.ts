/**
 * One role of a resumable stream (src/resumable-stream.ts) per process, for
 * tests/test_ts_resumable.py, which starts several of these against one
 * daemon, kills or freezes some, and compares what each saw. Not a node:test
 * file. Every message is one JSON line on stdout, with a `phase`.
 *
 * Environment: TURNSTORE_TARGET (the daemon), RS_HEARTBEAT_MS and
 * RS_STALE_MS (the context's heartbeatIntervalMs and staleAfterMs),
 * RS_REPLAY_FINISHED ("false" for replayFinished: false), RS_CHAT_THREAD (when
 * set, `locate` maps stream id "N" to turn N of that thread, as a chat's
 * streams in the chat's thread). Arguments:
 *  - `produce ID COUNT DELAY_MS [fail]`: createNewResumableStream with a
 *    source of COUNT chunks, one every DELAY_MS (then an error with `fail`);
 *    prints `created`, one `chunk` per chunk its own stream passes on, then
 *    `done` (or `failed` with the error's class name);
 *  - `resumable ID COUNT DELAY_MS`: the same through resumableStream; prints
 *    `opened` (with `made`: whether its source was started), then `done`
 *    with every chunk read;
 *  - `resume ID [SKIP]`: resumeExistingStream; prints `opened` (`result`:
 *    "stream", "null" or "undefined"), then `done` with every chunk read;
 *  - `has ID`: prints `has` with hasExistingStream's answer;
 *  - `route ID`: resumeStreamResponse (ID "-": no stream id); prints `route`
 *    with the status, content type and body.
 * The chunks of a source are `chunk(i)` below, so a test knows them.
 */
import { TurnstoreClient } from "../src/index";
import { createResumableStreamContext, resumeStreamResponse } from "../src/resumable-stream";

const [mode = "", streamId = "", ...rest] = process.argv.slice(2);

function say(message: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

/** The i-th chunk of every test source: different lengths, some beyond ASCII. */
export function chunk(i: number): string {
  return `data: {"i":${i},"text":"${"é".repeat(i % 3)}✓${i}"}\n\n`;
}

function source(count: number, delayMs: number, fail: boolean): () => ReadableStream<string> {
  let made = 0;
  return () =>
    new ReadableStream<string>({
      pull: async (controller) => {
        await new Promise((resolve) => setTimeout(resolve, delayMs));
        if (made < count) {
          controller.enqueue(chunk(made));
          made += 1;
        } else if (fail) {
          controller.error(new RangeError("the source failed"));
        } else {
          controller.close();
        }
      },
    });
}

async function readAll(stream: ReadableStream<string>, each?: (text: string) => void) {
  const chunks: string[] = [];
  const reader = stream.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return chunks;
    chunks.push(value);
    each?.(value);
  }
}

function positive(name: string): number | undefined {
  const value = process.env[name];
  return value === undefined ? undefined : Number(value);
}

const chatThread = process.env.RS_CHAT_THREAD;

async function main(): Promise<void> {
  const client = new TurnstoreClient(process.env.TURNSTORE_TARGET ?? "");
  const context = createResumableStreamContext({
    client,
    heartbeatIntervalMs: positive("RS_HEARTBEAT_MS"),
    staleAfterMs: positive("RS_STALE_MS"),
    replayFinished: process.env.RS_REPLAY_FINISHED !== "false",
    ...(chatThread === undefined
      ? {}
      : { locate: (id: string) => ({ threadId: chatThread, turn: Number(id) }) }),
    waitUntil: null,
  });
  try {
    if (mode === "produce") {
      const [count = "0", delay = "0", fail] = rest;
      const stream = await context.createNewResumableStream(
        streamId,
        source(Number(count), Number(delay), fail === "fail"),
      );
      say({ phase: "created", result: stream === null ? "null" : "stream" });
      if (stream === null) return;
      try {
        await readAll(stream, (text) => say({ phase: "chunk", text }));
        say({ phase: "done" });
      } catch (error) {
        say({ phase: "failed", error: (error as Error).constructor.name });
      }
    } else if (mode === "resumable") {
      const [count = "0", delay = "0"] = rest;
      let made = false;
      const make = source(Number(count), Number(delay), false);
      const stream = await context.resumableStream(streamId, () => {
        made = true;
        return make();
      });
      say({ phase: "opened", made, result: stream === null ? "null" : "stream" });
      say({ phase: "done", chunks: stream === null ? [] : await readAll(stream) });
    } else if (mode === "resume") {
      const skip = rest[0] === undefined ? undefined : Number(rest[0]);
      const stream = await context.resumeExistingStream(streamId, skip);
      say({
        phase: "opened",
        result: stream === undefined ? "undefined" : stream === null ? "null" : "stream",
      });
      say({ phase: "done", chunks: stream ? await readAll(stream) : [] });
    } else if (mode === "has") {
      say({ phase: "has", state: await context.hasExistingStream(streamId) });
    } else if (mode === "route") {
      const response = await resumeStreamResponse(context, streamId === "-" ? undefined : streamId);
      say({
        phase: "route",
        status: response.status,
        contentType: response.headers.get("content-type"),
        body: await response.text(),
      });
    } else {
      throw new Error(`unknown mode ${mode}`);
    }
  } finally {
    client.close();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`${String((error as Error)?.stack ?? error)}\n`);
  process.exit(1);
});
