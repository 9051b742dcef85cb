// POST /api/chat: answers a message with a UI message stream, stored chunk by
// chunk in turnstore as it goes (consumeSseStream), so that a reload, another
// tab or another instance can resume it.
import { openai } from "@ai-sdk/openai";
import { convertToModelMessages, generateId, streamText } from "ai";
import type { UIMessage } from "ai";

import { saveChat } from "../../../lib/chat-store";
import { streamContext } from "../../../lib/streams";

export async function POST(request: Request): Promise<Response> {
  const { id, messages }: { id: string; messages: UIMessage[] } = await request.json();
  await saveChat(id, { messages, activeStreamId: null });

  const result = streamText({
    model: openai("gpt-4o-mini"),
    messages: await convertToModelMessages(messages),
  });
  // The answer is produced to its end even if this request's reader goes away.
  result.consumeStream();

  return result.toUIMessageStreamResponse({
    originalMessages: messages,
    generateMessageId: generateId,
    onFinish: async ({ messages: finished }) => {
      // Saved: from now on the chat's page shows it, and nothing is left to resume.
      await saveChat(id, { messages: finished, activeStreamId: null });
    },
    async consumeSseStream({ stream }) {
      // Recorded before the stream starts, so onFinish (which clears it) comes after.
      // A reload in between finds no stream yet and gets 204.
      const streamId = generateId();
      await saveChat(id, { activeStreamId: streamId });
      await streamContext.createNewResumableStream(streamId, () => stream);
    },
  });
}
