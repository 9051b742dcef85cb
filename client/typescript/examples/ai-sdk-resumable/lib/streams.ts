// One resumable-stream context for the app. The only line that differs from the
// AI SDK's Redis setup is the import: `resumable-stream` became
// `@turnstore/client/resumable-stream`, and the chunks go to the turnstore
// daemon at TURNSTORE_TARGET (default 127.0.0.1:7070) instead of Redis.
import { createResumableStreamContext } from "@turnstore/client/resumable-stream";
import { after } from "next/server";

export const streamContext = createResumableStreamContext({ waitUntil: after });
