// The chat's page: its saved messages, then useChat, which resumes a stream in
// progress on load (resume: true: a GET to /api/chat/[id]/stream).
import { readChat } from "../../../lib/chat-store";
import { Chat } from "./chat";

export default async function Page({ params }: { params: Promise<{ id: string }> }) {
  const { id } = await params;
  const { messages } = await readChat(id);
  return <Chat id={id} initialMessages={messages} />;
}
