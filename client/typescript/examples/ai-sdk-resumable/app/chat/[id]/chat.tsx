"use client";

import { useChat } from "@ai-sdk/react";
import { DefaultChatTransport } from "ai";
import type { UIMessage } from "ai";
import { useState } from "react";

export function Chat({ id, initialMessages }: { id: string; initialMessages: UIMessage[] }) {
  const [input, setInput] = useState("");
  const { messages, sendMessage, status } = useChat({
    id,
    messages: initialMessages,
    // On load, reconnect to a stream in progress: GET /api/chat/{id}/stream (204: none).
    resume: true,
    transport: new DefaultChatTransport({ api: "/api/chat" }),
  });

  return (
    <main>
      {messages.map((message) => (
        <p key={message.id}>
          <b>{message.role}: </b>
          {message.parts.map((part, i) =>
            part.type === "text" ? <span key={i}>{part.text}</span> : null,
          )}
        </p>
      ))}
      <form
        onSubmit={(event) => {
          event.preventDefault();
          sendMessage({ text: input });
          setInput("");
        }}
      >
        <input
          value={input}
          onChange={(event) => setInput(event.target.value)}
          disabled={status !== "ready"}
        />
      </form>
      <p>
        Reload the page while an answer streams: it goes on from the first chunk, without a
        duplicate.
      </p>
    </main>
  );
}
