/**
 * Agent event envelopes: the client's form, the contract's flat JSON form,
 * and the wire form (header fields typed, the rest of the event as a JSON
 * body).
 */
import { randomUUID } from "node:crypto";

import { EventFormatError } from "./errors";
import { checkU64, fromNanos, fromU64 } from "./numbers";
import type { WireEnvelope, WireEnvelopeOutput, WireStoredEvent, WireTurn } from "./proto";

/** The content type of every body this client writes and the only one it reads. */
export const JSON_CONTENT_TYPE = "application/json";

/** The envelope's header keys, which an event's own fields must not use. */
export const ENVELOPE_KEYS = ["event_id", "sequence", "timestamp"] as const;

/** A tagged agent event: `type` names its kind, the other keys are its fields. */
export interface AgentEvent {
  type: string;
  [field: string]: unknown;
}

/** One agent event with its envelope header. */
export interface EventEnvelope {
  /** The agent's unique id for the event (a UUID); the daemon stores each once per thread. */
  eventId: string;
  /** The agent's own counter: kept as given, not unique, never used for ordering. */
  sequence: number;
  /** When the agent created the event (RFC 3339), kept verbatim. */
  timestamp: string;
  /** The event itself. */
  event: AgentEvent;
}

/** An envelope as stored, with what the daemon assigned. */
export interface StoredEvent {
  /** 0-based index in the thread, in commit order. */
  position: number;
  /** The turn it was appended to. */
  turn: number;
  /** The daemon's commit time in nanoseconds since the Unix epoch. */
  storedAtUnixNanos: bigint;
  envelope: EventEnvelope;
}

/** One turn: its events in append order and whether it is finished. */
export interface StoredTurn {
  turn: number;
  finished: boolean;
  events: StoredEvent[];
}

/**
 * A new envelope for `event` with a fresh UUID v4 and the current UTC time.
 *
 * The event is copied; it is checked only when appended.
 */
export function newEnvelope(event: AgentEvent, sequence = 0): EventEnvelope {
  return {
    eventId: randomUUID(),
    sequence,
    timestamp: new Date().toISOString(),
    event: { ...event },
  };
}

/**
 * The contract's flat JSON object of an envelope: header keys first, then
 * the event's keys (`{"event_id", "sequence", "timestamp", "type", ...}`).
 */
export function envelopeToJson(envelope: EventEnvelope): Record<string, unknown> {
  return {
    event_id: envelope.eventId,
    sequence: envelope.sequence,
    timestamp: envelope.timestamp,
    ...envelope.event,
  };
}

/**
 * Parses the contract's flat JSON object of an envelope.
 *
 * Throws EventFormatError when it is not an object, lacks a header key or
 * `type`, or has header values of the wrong type.
 */
export function envelopeFromJson(data: unknown): EventEnvelope {
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    throw new EventFormatError("an envelope must be a JSON object");
  }
  const { event_id: eventId, sequence, timestamp, ...event } = data as Record<string, unknown>;
  if (typeof eventId !== "string" || typeof timestamp !== "string") {
    throw new EventFormatError("event_id and timestamp must be strings");
  }
  if (typeof sequence !== "number" || typeof event.type !== "string") {
    throw new EventFormatError('sequence must be a number and "type" a string');
  }
  return { eventId, sequence, timestamp, event: event as AgentEvent };
}

/**
 * The wire form of an envelope: its event's fields except `type` as a JSON
 * body.
 *
 * Throws EventFormatError (nothing is sent) when the event has no non-empty
 * string `type`, uses a header key, or is not JSON-serialisable (a BigInt, a
 * cycle); InvalidArgumentError when `sequence` is not a safe integer >= 0.
 */
export function envelopeToWire(envelope: EventEnvelope): WireEnvelope {
  const { type, ...fields } = envelope.event;
  if (typeof type !== "string" || type === "") {
    throw new EventFormatError('an event needs a non-empty string "type"');
  }
  const clashing = ENVELOPE_KEYS.filter((key) => key in fields);
  if (clashing.length > 0) {
    throw new EventFormatError(`an event must not hold the envelope keys ${clashing.join(", ")}`);
  }
  let body: string;
  try {
    body = JSON.stringify(fields);
  } catch (error) {
    throw new EventFormatError(`event is not JSON-serialisable: ${String(error)}`, {
      cause: error,
    });
  }
  return {
    event_id: envelope.eventId,
    sequence: checkU64(envelope.sequence, "sequence"),
    timestamp: envelope.timestamp,
    type,
    body: Buffer.from(body, "utf8"),
    content_type: JSON_CONTENT_TYPE,
  };
}

/**
 * The envelope of a wire message.
 *
 * An empty body reads as no fields. Throws EventFormatError for a content
 * type other than JSON, a body that is not a JSON object, or a sequence above
 * Number.MAX_SAFE_INTEGER. The header's `type` wins over a `type` key in the
 * body (which this client never writes).
 */
export function envelopeFromWire(message: WireEnvelopeOutput): EventEnvelope {
  if (message.content_type !== "" && message.content_type !== JSON_CONTENT_TYPE) {
    throw new EventFormatError(
      `event ${message.event_id} is encoded as ${message.content_type}; this client reads only JSON`,
    );
  }
  let fields: unknown = {};
  if (message.body.length > 0) {
    try {
      fields = JSON.parse(message.body.toString("utf8"));
    } catch (error) {
      throw new EventFormatError(`event ${message.event_id} has invalid JSON`, { cause: error });
    }
  }
  if (typeof fields !== "object" || fields === null || Array.isArray(fields)) {
    throw new EventFormatError(`event ${message.event_id} body is not a JSON object`);
  }
  const event: AgentEvent = { type: message.type, ...fields };
  event.type = message.type;
  return {
    eventId: message.event_id,
    sequence: fromU64(message.sequence, "sequence"),
    timestamp: message.timestamp,
    event,
  };
}

/** A stored event of a response; throws EventFormatError as {@link envelopeFromWire}. */
export function storedEventFromWire(message: WireStoredEvent): StoredEvent {
  if (message.envelope === null) {
    throw new EventFormatError(`stored event at position ${message.position} has no envelope`);
  }
  return {
    position: fromU64(message.position, "position"),
    turn: fromU64(message.turn, "turn"),
    storedAtUnixNanos: fromNanos(message.stored_at_unix_nanos),
    envelope: envelopeFromWire(message.envelope),
  };
}

/** A turn (or a piece of one) of a response, with its events decoded. */
export function turnFromWire(message: WireTurn): StoredTurn {
  return {
    turn: fromU64(message.turn, "turn"),
    finished: message.finished,
    events: message.events.map(storedEventFromWire),
  };
}
