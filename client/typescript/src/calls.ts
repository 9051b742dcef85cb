/**
 * Promises over grpc-js callbacks, with errors mapped to TurnstoreErrors, and
 * the bounded retry of calls that fail while the daemon is unavailable.
 */
import type { CallOptions, ClientUnaryCall, ServiceError } from "@grpc/grpc-js";

import { InvalidArgumentError, ServerError, UnavailableError, toTurnstoreError } from "./errors";
import type { TurnstoreError } from "./errors";

/** What {@link RetryPolicy.onRetry} is told before each pause. */
export interface RetryEvent {
  /** The attempt about to be made after the pause: 2 for the first retry. */
  attempt: number;
  /** The pause before it, in milliseconds. */
  delayMs: number;
  /** The UnavailableError the previous attempt failed with. */
  error: TurnstoreError;
}

/**
 * How calls that fail with UnavailableError are retried; the same policy as
 * the Python client's RetryPolicy.
 *
 * `attempts` counts the first try (1: never retry); the pauses double from
 * `initialBackoffMs` up to `maxBackoffMs`, each with up to 50% random jitter.
 * The default, 6 attempts from 100 ms to 2 000 ms, waits about 3 to 5 s in
 * all: enough for a sidecar restart.
 */
export interface RetryPolicy {
  attempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  /** Called before each pause (for logging); an exception it throws is ignored. */
  onRetry?: ((event: RetryEvent) => void) | undefined;
}

/** 6 attempts, 0.1 s doubling to 2 s. */
export const DEFAULT_RETRY: Readonly<RetryPolicy> = Object.freeze({
  attempts: 6,
  initialBackoffMs: 100,
  maxBackoffMs: 2_000,
});

/**
 * `policy` with the defaults filled in; throws InvalidArgumentError for
 * `attempts` that is not an integer >= 1 or a negative or non-finite backoff.
 */
export function checkRetry(policy: Partial<RetryPolicy> = {}): RetryPolicy {
  const checked: RetryPolicy = {
    attempts: policy.attempts ?? DEFAULT_RETRY.attempts,
    initialBackoffMs: policy.initialBackoffMs ?? DEFAULT_RETRY.initialBackoffMs,
    maxBackoffMs: policy.maxBackoffMs ?? DEFAULT_RETRY.maxBackoffMs,
    onRetry: policy.onRetry,
  };
  if (!Number.isSafeInteger(checked.attempts) || checked.attempts < 1) {
    throw new InvalidArgumentError(
      `retry.attempts must be an integer >= 1, not ${checked.attempts}`,
    );
  }
  for (const name of ["initialBackoffMs", "maxBackoffMs"] as const) {
    const value = checked[name];
    if (typeof value !== "number" || !Number.isFinite(value) || value < 0) {
      throw new InvalidArgumentError(`retry.${name} must be a number >= 0, not ${String(value)}`);
    }
  }
  if (checked.onRetry !== undefined && typeof checked.onRetry !== "function") {
    throw new InvalidArgumentError("retry.onRetry must be a function");
  }
  return checked;
}

/** The pause before retry number `retry` (1 for the second attempt), jitter included. */
export function retryDelayMs(policy: RetryPolicy, retry: number): number {
  const base = Math.min(policy.initialBackoffMs * 2 ** Math.max(retry - 1, 0), policy.maxBackoffMs);
  return base * (1 + Math.random() / 2);
}

/** Call options with a deadline `timeoutMs` from now (none when undefined). */
export function deadline(timeoutMs: number | undefined): CallOptions {
  return timeoutMs === undefined ? {} : { deadline: Date.now() + timeoutMs };
}

/**
 * Runs one unary call and resolves with its response.
 *
 * `start` receives the callback to pass to the stub. Rejects with the
 * TurnstoreError of a failed call, or ServerError if the call succeeded
 * without a response.
 */
export function unary<Response>(
  start: (callback: (error: ServiceError | null, response?: Response) => void) => ClientUnaryCall,
): Promise<Response> {
  return new Promise((resolve, reject) => {
    try {
      start((error, response) => {
        if (error) {
          reject(toTurnstoreError(error));
        } else if (response === undefined) {
          reject(new ServerError("the daemon sent no response"));
        } else {
          resolve(response);
        }
      });
    } catch (error) {
      reject(toTurnstoreError(error)); // grpc-js throws at once on a closed channel, for one
    }
  });
}

/** How {@link Calls.retrying} treats one call. */
export interface RetryOptions<T> {
  /** False: one attempt only, whatever the policy (a save with an expected version). */
  retry?: boolean;
  /**
   * A retry (never the first attempt) failing with `error` counts as
   * success and resolves with `result()`: the earlier attempt may have
   * committed, and this is what its success looks like now (a finish that
   * finds its turn finished).
   */
  doneIfRetryFinds?: {
    error: abstract new (...args: never[]) => TurnstoreError;
    result: () => Promise<T>;
  };
}

/**
 * What every call of one client shares: its deadline, its retry policy, and
 * whether it is closed (then no retry is waited for: pauses in progress end
 * with UnavailableError).
 */
export class Calls {
  readonly timeoutMs: number | undefined;
  readonly retry: RetryPolicy;
  readonly #pauses = new Set<{ timer: NodeJS.Timeout; reject: (error: Error) => void }>();
  #closed = false;

  constructor(timeoutMs: number | undefined, retry: RetryPolicy) {
    this.timeoutMs = timeoutMs;
    this.retry = retry;
  }

  /** Call options with the client's deadline from now. */
  options(): CallOptions {
    return deadline(this.timeoutMs);
  }

  /** Throws UnavailableError once the client is closed: a call would fail anyway. */
  checkOpen(): void {
    if (this.#closed) {
      throw new UnavailableError("the client is closed");
    }
  }

  /** Ends every pause in progress with UnavailableError; later calls are not retried. */
  close(): void {
    this.#closed = true;
    for (const pause of this.#pauses) {
      clearTimeout(pause.timer);
      pause.reject(new UnavailableError("the client was closed while a call waited to retry"));
    }
    this.#pauses.clear();
  }

  /**
   * Whether a call that failed with `error` on attempt `attempt` (1 for the
   * first) may be tried again: it is an UnavailableError, the policy allows
   * another attempt, and the client is open.
   */
  mayRetry(error: unknown, attempt: number): boolean {
    return error instanceof UnavailableError && attempt < this.retry.attempts && !this.#closed;
  }

  /**
   * The pause before attempt `attempt` (2 for the first retry), after
   * telling `onRetry` that it follows `error`.
   */
  delayBefore(attempt: number, error: TurnstoreError): number {
    const delayMs = retryDelayMs(this.retry, attempt - 1);
    try {
      this.retry.onRetry?.({ attempt, delayMs, error });
    } catch {
      // A logging hook must not change what the call does.
    }
    return delayMs;
  }

  /**
   * Waits before attempt `attempt + 1`, telling `onRetry` first. Rejects
   * with UnavailableError when the client is closed meanwhile; resolves
   * early (false) when `signal` is aborted.
   */
  pause(attempt: number, error: TurnstoreError, signal?: AbortSignal): Promise<boolean> {
    const delayMs = this.delayBefore(attempt + 1, error);
    return new Promise<boolean>((resolve, reject) => {
      const pause = {
        timer: setTimeout(() => {
          this.#pauses.delete(pause);
          signal?.removeEventListener("abort", aborted);
          resolve(true);
        }, delayMs),
        reject,
      };
      const aborted = (): void => {
        clearTimeout(pause.timer);
        this.#pauses.delete(pause);
        resolve(false);
      };
      this.#pauses.add(pause);
      signal?.addEventListener("abort", aborted, { once: true });
    });
  }

  /**
   * Runs `attempt` until it succeeds or fails with anything but a retryable
   * UnavailableError (see {@link mayRetry}); rejects with the last error.
   */
  async retrying<T>(attempt: () => Promise<T>, options: RetryOptions<T> = {}): Promise<T> {
    for (let number = 1; ; number += 1) {
      try {
        this.checkOpen();
        return await attempt();
      } catch (error) {
        const done = options.doneIfRetryFinds;
        if (number > 1 && done !== undefined && error instanceof done.error) {
          return await done.result();
        }
        if (options.retry === false || !this.mayRetry(error, number)) {
          throw error;
        }
        await this.pause(number, error as UnavailableError);
      }
    }
  }

  /**
   * One unary call with the client's deadline (fresh for each attempt),
   * retried by the policy; `options` as in {@link retrying}.
   */
  unary<Response>(
    start: (
      options: CallOptions,
      callback: (error: ServiceError | null, response?: Response) => void,
    ) => ClientUnaryCall,
    options: RetryOptions<Response> = {},
  ): Promise<Response> {
    return this.retrying(() => unary<Response>((done) => start(this.options(), done)), options);
  }
}
