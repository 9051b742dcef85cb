// Produces one answer with the AI SDK's streamText (a mock model: no API key),
// stored chunk by chunk in turnstore exactly as app/api/chat/route.ts does:
//   node produce.mjs STREAM_ID [WORDS]
// Prints how much of the answer its own response has delivered; kill it
// halfway (Ctrl-C, kill -9) and resume the stream with resume.mjs.
import { TurnstoreClient } from "@turnstore/client";
import { createResumableStreamContext } from "@turnstore/client/resumable-stream";
import { streamText } from "ai";
import { MockLanguageModelV3, simulateReadableStream } from "ai/test";

const [streamId, words = "100"] = process.argv.slice(2);
const client = new TurnstoreClient(process.env.TURNSTORE_TARGET ?? "127.0.0.1:7070");
const storing = [];
const streamContext = createResumableStreamContext({
  client,
  // A server that lives on keeps producing by itself; a script waits for it.
  waitUntil: (promise) => storing.push(promise),
});

const deltas = Array.from({ length: Number(words) }, (_, i) => `word${i} `);
const model = new MockLanguageModelV3({
  doStream: async () => ({
    stream: simulateReadableStream({
      chunkDelayInMs: 100,
      chunks: [
        { type: "stream-start", warnings: [] },
        { type: "text-start", id: "t" },
        ...deltas.map((delta) => ({ type: "text-delta", id: "t", delta })),
        { type: "text-end", id: "t" },
        {
          type: "finish",
          finishReason: { unified: "stop", raw: "stop" },
          usage: { inputTokens: { total: 1 }, outputTokens: { total: deltas.length } },
        },
      ],
    }),
  }),
});

const response = streamText({ model, prompt: "count" }).toUIMessageStreamResponse({
  async consumeSseStream({ stream }) {
    await streamContext.createNewResumableStream(streamId, () => stream);
  },
});
let received = 0;
for await (const bytes of response.body) {
  received += bytes.length;
  process.stdout.write(`\rthe producer's own response: ${received} bytes`);
}
await Promise.all(storing);
console.log("\nstored and finished");
client.close();
