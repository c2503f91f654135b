import { once } from 'node:events';
import { performance } from 'node:perf_hooks';
import { z } from 'zod';
import { ERROR_CODE_HEADER, type ErrorBody } from '../protocol/index.js';
import { BlockrepError, toBlockrepError } from '../shared/index.js';
import { httpStatusFor } from './http-status.js';
import type { RequestContext } from './request-context.js';

/** Reading request bodies with hard limits, and writing responses with backpressure. */

const contentLengthSchema = z.string().regex(/^\d{1,15}$/).transform(Number);
const jsonTypeSchema = z.string().max(128).regex(/^application\/json\s*(;.*)?$/i);

/** The declared Content-Length, or undefined for a chunked body; a malformed one is refused. */
export function declaredLength(ctx: RequestContext): number | undefined {
  const header = ctx.req.headers['content-length'];
  if (header === undefined) return undefined;
  const parsed = contentLengthSchema.safeParse(header);
  if (!parsed.success) throw new BlockrepError('BAD_REQUEST', 'invalid Content-Length');
  return parsed.data;
}

/** Refuses early a body that says it is larger than `maxBytes`. */
export function checkDeclaredLength(ctx: RequestContext, maxBytes: number, what: string): number | undefined {
  const length = declaredLength(ctx);
  if (length !== undefined && length > maxBytes) throw tooLarge(what, maxBytes);
  return length;
}

export function tooLarge(what: string, maxBytes: number): BlockrepError {
  return new BlockrepError('TOO_LARGE', `${what} is larger than its limit of ${maxBytes} bytes`);
}

/** Bytes of a refused body still read (and dropped) after the answer, so the client hears it. */
const DISCARD_MAX_BYTES = 64 * 1024 * 1024;
const DISCARD_MAX_MS = 10_000;

/**
 * The request body's pieces, as they arrive, at a minimum rate: a body that brings fewer than
 * `bodyRate.minBytes` in a window of `bodyRate.windowMs` (time the server itself spends on a
 * piece does not count) is refused with UNAVAILABLE, and its connection closed after the answer
 * — a trickle would otherwise hold its share of memory and a connection for as long as the
 * server's silence timeout. Stopping early (a refusal) does not destroy the request: that would
 * reset the connection under the answer; discardRest() deals with what is left.
 */
export async function* requestPieces(ctx: RequestContext): AsyncIterable<Buffer> {
  const iterator = ctx.req.iterator({ destroyOnReturn: false }) as AsyncIterator<Buffer>;
  const { minBytes, windowMs } = ctx.bodyRate;
  let windowEnd = performance.now() + windowMs;
  let windowBytes = 0;
  let stalled = false;
  try {
    for (;;) {
      const result = await within(iterator.next(), windowEnd - performance.now());
      if (result === undefined) {
        stalled = true;
        ctx.closeAfterAnswer = true;
        throw new BlockrepError('UNAVAILABLE', `the request body arrived slower than ${minBytes} bytes in ${windowMs / 1000} s: refused, since it held what other clients need`);
      }
      if (result.done) return;
      windowBytes += result.value.length;
      if (windowBytes >= minBytes) {
        windowBytes = 0;
        windowEnd = performance.now() + windowMs;
      }
      const paused = performance.now();
      yield result.value;
      windowEnd += performance.now() - paused;
    }
  } finally {
    // A stalled next() is still pending: the closed connection settles it (and its return).
    if (stalled) void iterator.return?.().catch(() => undefined);
    else await iterator.return?.();
  }
}

/** The promise's value, or undefined if `ms` pass first (a rejection after that is dropped). */
function within<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  promise.catch(() => undefined);
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), Math.max(0, ms));
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * After an answer to a request whose body was not read (a refusal): read and drop the rest, up
 * to a bound, then `done()` (which ends the answer). The answer itself is already written in
 * full (it has a Content-Length), so a client still sending receives it; ending it only once the
 * body is in keeps Node from closing a "Connection: close" socket under the client's writes.
 */
export function discardRest(ctx: RequestContext, done: () => void): void {
  const { req } = ctx;
  if (req.readableEnded || req.destroyed) {
    done();
    return;
  }
  let dropped = 0;
  let finished = false;
  const finish = (): void => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    done();
  };
  const cut = (): void => {
    finished = true;
    req.socket.destroy();
  };
  const timer = setTimeout(cut, DISCARD_MAX_MS);
  timer.unref();
  req.on('data', (piece: Buffer) => {
    dropped += piece.length;
    if (dropped > DISCARD_MAX_BYTES) cut();
  });
  req.once('end', finish);
  req.once('close', finish);
  req.resume();
}

/** The request body as pieces, counted, stopping with TOO_LARGE past `maxBytes`. */
export async function* bodyPieces(ctx: RequestContext, maxBytes: () => number, what: string): AsyncIterable<Buffer> {
  for await (const piece of requestPieces(ctx)) {
    ctx.bytesIn += piece.length;
    if (ctx.bytesIn > maxBytes()) throw tooLarge(what, maxBytes());
    yield piece;
  }
}

/**
 * The whole body in memory, taken from the request's budget lease as it arrives (not as
 * declared): only for bodies with a bound.
 */
export async function readBody(ctx: RequestContext, maxBytes: number, what: string): Promise<Buffer> {
  const declared = checkDeclaredLength(ctx, maxBytes, what);
  const pieces: Buffer[] = [];
  let total = 0;
  const base = ctx.lease.heldBytes;
  for await (const piece of bodyPieces(ctx, () => maxBytes, what)) {
    try {
      await ctx.lease.ensure(base + total + piece.length, base + maxBytes);
    } catch (err) {
      // Refused for memory: reading (and dropping) the rest would cost what the refusal saves.
      ctx.closeAfterAnswer = true;
      throw err;
    }
    pieces.push(piece);
    total += piece.length;
  }
  if (declared !== undefined && total !== declared) throw new BlockrepError('BAD_REQUEST', `${what}: body shorter than its Content-Length`);
  return Buffer.concat(pieces, total);
}

export async function readJson<T>(ctx: RequestContext, schema: z.ZodType<T>, maxBytes: number, what: string): Promise<T> {
  if (!jsonTypeSchema.safeParse(ctx.req.headers['content-type']).success) throw new BlockrepError('BAD_REQUEST', `${what} must be application/json`);
  const body = await readBody(ctx, maxBytes, what);
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch {
    throw new BlockrepError('BAD_REQUEST', `${what} is not valid JSON`);
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const tooBig = issue?.code === 'too_big' && issue.path.length === 1;
    throw new BlockrepError(tooBig ? 'TOO_LARGE' : 'BAD_REQUEST', `${what}: ${issue ? `${issue.path.join('.') || '(body)'}: ${issue.message}` : 'invalid'}`);
  }
  return parsed.data;
}

export function sendEmpty(ctx: RequestContext, status: number, headers: Record<string, string | number> = {}): void {
  ctx.res.writeHead(status, { ...headers, 'content-length': headers['content-length'] ?? 0 });
  ctx.res.end();
}

export function sendJson(ctx: RequestContext, status: number, body: unknown, headers: Record<string, string> = {}, options: { discardBody?: boolean } = {}): void {
  const data = Buffer.from(JSON.stringify(body));
  ctx.res.writeHead(status, { ...headers, 'content-type': 'application/json', 'content-length': data.length, 'cache-control': 'no-store' });
  if (ctx.req.method !== 'HEAD') {
    ctx.bytesOut += data.length;
    ctx.res.write(data);
  }
  if (options.discardBody) discardRest(ctx, () => ctx.res.end());
  else ctx.res.end();
}

/** Writes with backpressure; false once the client has gone. */
export async function writePiece(ctx: RequestContext, piece: Uint8Array): Promise<boolean> {
  if (ctx.res.destroyed) return false;
  ctx.bytesOut += piece.byteLength;
  if (!ctx.res.write(piece)) {
    await Promise.race([once(ctx.res, 'drain'), once(ctx.res, 'close')]);
  }
  return !ctx.res.destroyed;
}

/**
 * The one way errors leave the server: {code, message} with the status of http-status.ts, and
 * the code in a header too (HEAD has no body). Errors without a code say nothing of the server's
 * inside: their detail goes to the log (returned), the client gets "internal error".
 */
export function sendError(ctx: RequestContext, err: unknown): string | undefined {
  const e = toBlockrepError(err);
  ctx.code = e.code;
  const status = httpStatusFor(e.code);
  const internal = status >= 500 && e.code !== 'UNAVAILABLE' && e.code !== 'NO_SPACE';
  const message = internal
    ? 'the repository server failed to do this (its log says why)'
    : e.code === 'NO_SPACE'
      ? 'the repository server has no space left on its device'
      : ctx.redact(e.message);
  const body: ErrorBody = {
    code: e.code,
    message,
    ...(e.details && !internal ? { details: e.details } : {}),
  };
  if (ctx.res.headersSent) {
    // A streamed response cannot change its status: cut it, so the client sees it incomplete.
    ctx.res.destroy();
  } else {
    const headers: Record<string, string> = { [ERROR_CODE_HEADER]: e.code };
    if (e.code === 'UNAUTHORIZED') headers['www-authenticate'] = 'Bearer realm="blockrep"';
    if (e.code === 'UNAVAILABLE') headers['retry-after'] = '1';
    if (ctx.closeAfterAnswer) {
      headers.connection = 'close';
      sendJson(ctx, status, body, headers);
      closeAfterAnswer(ctx);
    } else {
      sendJson(ctx, status, body, headers, { discardBody: true });
    }
  }
  return internal || status >= 500 ? `${e.code}: ${e.message}` : undefined;
}

/** Ends the connection once the answer is out; a peer that does not let go is cut soon after. */
function closeAfterAnswer(ctx: RequestContext): void {
  const socket = ctx.req.socket;
  ctx.res.once('finish', () => {
    socket.end();
    setTimeout(() => socket.destroy(), 2000).unref();
  });
}
