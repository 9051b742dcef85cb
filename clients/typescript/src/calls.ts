/** Promises over grpc-js callbacks, with errors mapped to TurnstoreErrors. */
import type { CallOptions, ClientUnaryCall, ServiceError } from "@grpc/grpc-js";

import { ServerError, toTurnstoreError } from "./errors";

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
    start((error, response) => {
      if (error) {
        reject(toTurnstoreError(error));
      } else if (response === undefined) {
        reject(new ServerError("the daemon sent no response"));
      } else {
        resolve(response);
      }
    });
  });
}
