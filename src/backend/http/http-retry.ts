/**
 * When the HTTP client tries again. Only failures that say nothing about the request itself
 * are retried: the connection could not be made or broke, a timeout, or the server (or a proxy
 * in front of it) said it is overloaded or briefly unavailable (429, 502, 503, 504). A 4xx
 * answer is the server's verdict on the request and is never retried.
 */
export interface RetryPolicy {
  /** Tries in all, the first included. */
  attempts: number;
  /** Delay before the first retry; doubled for each further one. */
  baseDelayMs: number;
  maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 5, baseDelayMs: 250, maxDelayMs: 8000 };

/** A server's Retry-After is honoured up to this. */
const MAX_RETRY_AFTER_MS = 30_000;

const TRANSIENT_NETWORK_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'ENETUNREACH',
  'ENETDOWN',
  'EHOSTUNREACH',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
]);

/** Failures that happen before a request can have reached the server. */
const NOT_SENT_CODES = new Set(['ECONNREFUSED', 'ENETUNREACH', 'ENETDOWN', 'EHOSTUNREACH', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT']);

export function isTransientStatus(status: number): boolean {
  return status === 429 || status === 502 || status === 503 || status === 504;
}

/** The system or undici code of a network error (looking into AggregateError and causes). */
export function networkErrorCode(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e && depth < 4; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && code !== 'ERR_ASSERTION') return code;
    if (e instanceof AggregateError && e.errors.length > 0) {
      e = e.errors[0];
      continue;
    }
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

export function isTransientNetworkError(err: unknown): boolean {
  const code = networkErrorCode(err);
  return code !== undefined && TRANSIENT_NETWORK_CODES.has(code);
}

/** Whether a failed attempt may still have been carried out by the server. */
export function mayHaveReachedServer(err: unknown): boolean {
  const code = networkErrorCode(err);
  return code === undefined || !NOT_SENT_CODES.has(code);
}

/**
 * Exponential backoff with jitter: before retry n (1-based), a delay drawn from
 * [d/2, d] with d = min(max, base·2^(n-1)), so clients that failed together do not return
 * together; at least what the server's Retry-After (seconds) asks.
 */
export function retryDelayMs(retry: number, policy: RetryPolicy, retryAfter?: string | string[]): number {
  const d = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (retry - 1));
  let delay = d / 2 + Math.random() * (d / 2);
  const header = Array.isArray(retryAfter) ? retryAfter[0] : retryAfter;
  if (header !== undefined && /^\d{1,6}$/.test(header)) delay = Math.max(delay, Math.min(MAX_RETRY_AFTER_MS, Number(header) * 1000));
  return Math.round(delay);
}
