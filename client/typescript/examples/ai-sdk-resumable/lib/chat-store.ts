// Which stream each chat is receiving, and the chat's saved messages. In memory
// here to keep the example short: use your database (any instance must see
// what another one saved, or a reload served by another instance finds no
// active stream).
import type { UIMessage } from "ai";

interface Chat {
  messages: UIMessage[];
  activeStreamId: string | null;
}

const chats = new Map<string, Chat>();

export async function readChat(id: string): Promise<Chat> {
  return chats.get(id) ?? { messages: [], activeStreamId: null };
}

export async function saveChat(id: string, update: Partial<Chat>): Promise<void> {
  chats.set(id, { ...(await readChat(id)), ...update });
}
