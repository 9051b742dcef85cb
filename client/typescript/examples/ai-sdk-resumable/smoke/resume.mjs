// Resumes a stream the way useChat({ resume: true }) does after a reload: the
// AI SDK's DefaultChatTransport.reconnectToStream, answered by the same code
// as app/api/chat/[id]/stream/route.ts (204 when there is nothing to resume):
//   node resume.mjs STREAM_ID
import { TurnstoreClient } from "@turnstore/client";
import {
  createResumableStreamContext,
  resumeStreamResponse,
} from "@turnstore/client/resumable-stream";
import { DefaultChatTransport } from "ai";

const [streamId] = process.argv.slice(2);
const client = new TurnstoreClient(process.env.TURNSTORE_TARGET ?? "127.0.0.1:7070");
const streamContext = createResumableStreamContext({ client });

// The reconnect route, called in place of an HTTP request to it.
const GET = () => resumeStreamResponse(streamContext, streamId);
const transport = new DefaultChatTransport({ api: "http://localhost/api/chat", fetch: GET });

const stream = await transport.reconnectToStream({ chatId: "demo" });
if (stream === null) {
  console.log("204: nothing to resume");
} else {
  for await (const chunk of stream) {
    process.stdout.write(chunk.type === "text-delta" ? chunk.delta : `[${chunk.type}]`);
  }
  console.log();
}
client.close();
