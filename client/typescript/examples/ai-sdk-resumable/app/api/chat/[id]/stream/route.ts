// GET /api/chat/[id]/stream: where useChat({ resume: true }) reconnects after a
// reload. 204 when the chat has no stream to resume (useChat then does
// nothing), else the stream from its first chunk: what turnstore stored, then
// the live rest; a stream that finished meanwhile is replayed whole, and one
// whose producing instance died ends after what it stored.
import { resumeStreamResponse } from "@turnstore/client/resumable-stream";

import { readChat } from "../../../../../lib/chat-store";
import { streamContext } from "../../../../../lib/streams";

export async function GET(
  _request: Request,
  { params }: { params: Promise<{ id: string }> },
): Promise<Response> {
  const { id } = await params;
  const chat = await readChat(id);
  return resumeStreamResponse(streamContext, chat.activeStreamId);
}
