/**
 * The proto's 64-bit integers as JavaScript numbers.
 *
 * Turns, positions, sequences, counts and versions are `number`s in this
 * client: every value a daemon assigns (positions, versions, epochs) stays
 * far below 2**53. Values an agent chooses (turn numbers, sequences) must be
 * safe integers too; a larger one is refused when sent and reported when
 * read, never silently rounded.
 */
import { EventFormatError, InvalidArgumentError } from "./errors";

/**
 * `value` as a u64 field of a request.
 *
 * Throws InvalidArgumentError (before anything is sent) unless `value` is a
 * safe integer >= 0.
 */
export function checkU64(value: number, field: string): number {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new InvalidArgumentError(
      `${field} must be an integer between 0 and ${Number.MAX_SAFE_INTEGER}, not ${String(value)}`,
    );
  }
  return value;
}

/**
 * A u64 field of a response (a decimal string, as the loader decodes it).
 *
 * Throws EventFormatError for a value above Number.MAX_SAFE_INTEGER (which a
 * client in another language may have written).
 */
export function fromU64(value: string, field: string): number {
  const result = Number(value);
  if (!Number.isSafeInteger(result)) {
    throw new EventFormatError(`${field} ${value} is too large for a JavaScript number`);
  }
  return result;
}

/** An int64 of nanoseconds since the Unix epoch, exactly (a bigint). */
export function fromNanos(value: string): bigint {
  return BigInt(value);
}
