import type { IncomingHttpHeaders } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { Pool } from 'undici';
import { BlockrepError, isBlockrepError } from '../../shared/index.js';
import { errorFromNetwork, errorFromResponse } from './http-error.js';
import { DEFAULT_RETRY, isTransientNetworkError, isTransientStatus, mayHaveReachedServer, retryDelayMs, type RetryPolicy } from './http-retry.js';
import type { ReplayableBody } from './replayable-body.js';

export interface HttpTimeouts {
  /** Establishing a connection (TCP and TLS). */
  connectMs: number;
  /** From the end of sending (or the last body byte accepted) to the answer's headers. */
  headersMs: number;
  /** Silence while an answer's body is arriving. */
  bodyMs: number;
}

export const DEFAULT_TIMEOUTS: HttpTimeouts = { connectMs: 10_000, headersMs: 60_000, bodyMs: 60_000 };

export interface HttpTransportOptions {
  /** http(s)://host:port[/base path] of a `blockrep serve`. */
  url: string;
  /** The access token (sent as a bearer token; never logged, never in `location`). */
  token?: string;
  /** PEM of the CA to trust for https (replaces the system's CAs). */
  ca?: string | Buffer;
  /** Connections kept to the server (keep-alive, one request at a time each). */
  connections?: number;
  retry?: Partial<RetryPolicy>;
  timeouts?: Partial<HttpTimeouts>;
}

export type HttpMethod = 'HEAD' | 'GET' | 'PUT' | 'DELETE' | 'POST';

export interface HttpRequest {
  method: HttpMethod;
  /** Path under the base URL, e.g. /v1/objects/… */
  path: string;
  headers?: Record<string, string>;
  /** A Uint8Array or a spooled body: both are sent again whole on a retry. */
  body?: Uint8Array | ReplayableBody;
  /** Statuses the caller handles; any other becomes an error (after retries, if transient). */
  accept: readonly number[];
  /** For messages: what the request was for. */
  what: string;
  headersTimeoutMs?: number;
}

export interface HttpResponse {
  statusCode: number;
  headers: IncomingHttpHeaders;
  body: AsyncIterable<Buffer> & { destroy(): unknown; dump(): Promise<void>; readableEnded: boolean };
  /** An earlier attempt failed after it may have reached the server (a write may have happened). */
  retried: boolean;
}

/**
 * The HTTP plumbing under HttpBackend, kept apart so other uploads (manifest deltas) and
 * wrappers can share it: one undici Pool (keep-alive, bounded connections, no pipelining),
 * the bearer token, timeouts, retries, and the rule that every response body is consumed or
 * destroyed.
 */
export class HttpTransport {
  readonly location: string;
  private readonly pool: Pool;
  private readonly basePath: string;
  private readonly retry: RetryPolicy;
  private readonly timeouts: HttpTimeouts;
  private readonly auth: Record<string, string>;

  constructor(options: HttpTransportOptions) {
    const url = parseRepositoryUrl(options.url);
    this.location = `${url.origin}${url.basePath}`;
    this.basePath = url.basePath;
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
    this.timeouts = { ...DEFAULT_TIMEOUTS, ...options.timeouts };
    this.auth = options.token === undefined ? {} : { authorization: `Bearer ${options.token}` };
    this.pool = new Pool(url.origin, {
      // A backup keeps 16 uploads going; the questions about the next batches need their own.
      connections: options.connections ?? 20,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      headersTimeout: this.timeouts.headersMs,
      bodyTimeout: this.timeouts.bodyMs,
      connect: { timeout: this.timeouts.connectMs, ...(options.ca !== undefined ? { ca: options.ca } : {}) },
    });
  }

  /**
   * Sends a request and hands an accepted answer to `handle`, which consumes its body. The
   * request is retried (the whole exchange, `handle` included) on transient failures only.
   */
  async exchange<T>(req: HttpRequest, handle: (res: HttpResponse) => Promise<T>): Promise<T> {
    return this.run(req, handle, false);
  }

  /**
   * Like exchange, but the accepted answer is handed over unread (a listing streamed to its
   * consumer): the caller must consume or destroy its body. Retries end with the headers.
   */
  async open(req: HttpRequest): Promise<HttpResponse> {
    return this.run(req, async (res) => res, true);
  }

  private async run<T>(req: HttpRequest, handle: (res: HttpResponse) => Promise<T>, handOver: boolean): Promise<T> {
    let retried = false;
    for (let attempt = 1; ; attempt++) {
      const last = attempt >= this.retry.attempts;
      let res: HttpResponse | undefined;
      try {
        const raw = await this.pool.request({
          path: this.basePath + req.path,
          method: req.method,
          headers: { ...this.auth, ...req.headers },
          body: req.body === undefined ? null : req.body instanceof Uint8Array ? req.body : req.body.open(),
          headersTimeout: req.headersTimeoutMs ?? this.timeouts.headersMs,
          bodyTimeout: this.timeouts.bodyMs,
        });
        res = { statusCode: raw.statusCode, headers: raw.headers, body: raw.body, retried };
        if (req.accept.includes(res.statusCode)) {
          const result = await handle(res);
          if (handOver) res = undefined;
          return result;
        }
        if (isTransientStatus(res.statusCode) && !last) {
          await res.body.dump().catch(() => undefined);
          retried = true;
          await sleep(retryDelayMs(attempt, this.retry, res.headers['retry-after']));
          continue;
        }
        throw await errorFromResponse(res, this.location, req.what);
      } catch (err) {
        if (isBlockrepError(err)) throw err;
        if (!isTransientNetworkError(err) || last) throw errorFromNetwork(err, this.location, req.what, attempt);
        retried ||= mayHaveReachedServer(err);
        await sleep(retryDelayMs(attempt, this.retry));
        continue;
      } finally {
        // Consumed or discarded, never left open: an unread body would hold its connection.
        if (res && !res.body.readableEnded) await res.body.dump().catch(() => undefined);
      }
    }
  }

  async close(): Promise<void> {
    await this.pool.close();
  }
}

export interface RepositoryUrl {
  origin: string;
  /** "" or "/some/base", no trailing slash. */
  basePath: string;
}

export function parseRepositoryUrl(text: string): RepositoryUrl {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new BlockrepError('USAGE', `invalid repository URL ${JSON.stringify(text)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new BlockrepError('USAGE', `repository URLs are http:// or https://, not ${url.protocol}//`);
  if (url.username !== '' || url.password !== '') {
    throw new BlockrepError('USAGE', 'do not put credentials in the repository URL; give the token in BLOCKREP_TOKEN or --token-file');
  }
  if (url.search !== '' || url.hash !== '') throw new BlockrepError('USAGE', 'a repository URL has no query or fragment');
  return { origin: url.origin, basePath: url.pathname.replace(/\/+$/, '') };
}
