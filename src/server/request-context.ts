import type { IncomingMessage, ServerResponse } from 'node:http';

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
  /** Hides the server's own paths in messages that go to the client. */
  redact: (message: string) => string;
}
