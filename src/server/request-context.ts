import type { IncomingMessage, ServerResponse } from 'node:http';
import type { BudgetLease } from './byte-budget.js';

/** How slowly a request body may arrive (server-limits.ts). */
export interface BodyRate {
  minBytes: number;
  windowMs: number;
}

/** What one request did, for its log line: filled in as the request is handled. */
export interface RequestContext {
  req: IncomingMessage;
  res: ServerResponse;
  /** The kind of object or endpoint (chunk, manifest, lock, config, list, sizes, flush, -). */
  kind: string;
  /** The token's name, never its secret; "-" when there is none. */
  token: string;
  bytesIn: number;
  bytesOut: number;
  /** The error code sent, if any. */
  code?: string;
  /** The client hung up before the answer was complete: its doing, not a failure here. */
  aborted?: boolean;
  /** Close the connection after the answer instead of reading the rest of the body. */
  closeAfterAnswer?: boolean;
  /** Hides the server's own paths in messages that go to the client. */
  redact: (message: string) => string;
  /** The request's share of the server's memory budget: every body is read through it. */
  lease: BudgetLease;
  bodyRate: BodyRate;
}
