import type { IncomingHttpHeaders } from 'node:http';
import { BlockrepError, errorCodes, type ErrorCode } from '../../shared/index.js';
import { ERROR_CODE_HEADER, errorBodySchema, MAX_ERROR_BODY_BYTES } from '../../protocol/index.js';
import { isTransientNetworkError, networkErrorCode } from './http-retry.js';

/**
 * Turns what the server (or something in front of it) answered into a BlockrepError. A blockrep
 * server names the code in its body and a header: that code comes back as it was raised, so a
 * lock conflict is REPO_LOCKED and a damaged upload CHUNK_CORRUPT remotely too. Answers without
 * a code (a proxy, another server) get one from their status.
 */
export async function errorFromResponse(
  res: { statusCode: number; headers: IncomingHttpHeaders; body: AsyncIterable<Buffer> & { destroy(): unknown } },
  location: string,
  what: string,
): Promise<BlockrepError> {
  const text = await readErrorBody(res.body);
  let body: ReturnType<typeof errorBodySchema.safeParse> | undefined;
  try {
    body = errorBodySchema.safeParse(JSON.parse(text));
  } catch {
    body = undefined;
  }
  if (body?.success) {
    return new BlockrepError(body.data.code, `${what}: ${body.data.message} (${location})`, body.data.details ? { details: body.data.details } : undefined);
  }
  const headerCode = res.headers[ERROR_CODE_HEADER];
  if (typeof headerCode === 'string' && (errorCodes as readonly string[]).includes(headerCode)) {
    return new BlockrepError(headerCode as ErrorCode, `${what}: the server answered ${res.statusCode} ${headerCode} (${location})`);
  }
  return new BlockrepError(codeForForeignStatus(res.statusCode), `${what}: ${location} answered HTTP ${res.statusCode}${text ? `: ${text.slice(0, 200)}` : ''} — is it a blockrep server?`);
}

function codeForForeignStatus(status: number): ErrorCode {
  if (status === 401) return 'UNAUTHORIZED';
  if (status === 403) return 'FORBIDDEN';
  if (status === 413) return 'TOO_LARGE';
  if (status === 429 || status === 502 || status === 503 || status === 504) return 'UNAVAILABLE';
  return 'IO';
}

async function readErrorBody(body: AsyncIterable<Buffer> & { destroy(): unknown }): Promise<string> {
  const pieces: Buffer[] = [];
  let total = 0;
  try {
    for await (const piece of body) {
      pieces.push(piece);
      total += piece.length;
      if (total > MAX_ERROR_BODY_BYTES) break;
    }
  } catch {
    // An error answer whose body breaks off still has its status.
  } finally {
    body.destroy();
  }
  return Buffer.concat(pieces).toString('utf8', 0, Math.min(total, MAX_ERROR_BODY_BYTES));
}

/**
 * OpenSSL's answers when the peer's first bytes are not a TLS record (a plain-HTTP server
 * answering the ClientHello with "HTTP/1.1 400"): the server is there, but not over TLS.
 */
const NOT_TLS_CODES = new Set(['ERR_SSL_WRONG_VERSION_NUMBER', 'ERR_SSL_PACKET_LENGTH_TOO_LONG', 'ERR_SSL_RECORD_LAYER_FAILURE', 'ERR_SSL_HTTP_REQUEST']);

/** A request that got no answer (after its retries), or whose answer could not be used. */
export function errorFromNetwork(err: unknown, location: string, what: string, attempts: number): BlockrepError {
  const code = networkErrorCode(err);
  const text = err instanceof Error ? err.message || code || err.name : String(err);
  if (code !== undefined && NOT_TLS_CODES.has(code)) {
    const plain = location.replace(/^https:/i, 'http:');
    return new BlockrepError('UNAVAILABLE', `${what}: ${location}: the server does not speak TLS (${code}); if it serves plain HTTP, use ${plain}`, { cause: err });
  }
  if (code !== undefined && /CERT|SELF_SIGNED|TLS|SSL|ERR_OSSL/i.test(code)) {
    return new BlockrepError('IO', `${what}: ${location}: the server's TLS certificate is not trusted (${code}); give --cacert with the CA that signed it`, { cause: err });
  }
  if (!isTransientNetworkError(err)) return new BlockrepError('IO', `${what}: ${location}: ${text}`, { cause: err });
  const why = code === 'ECONNREFUSED' ? 'connection refused (is blockrep serve running there?)' : text;
  return new BlockrepError('UNAVAILABLE', `${what}: cannot reach the repository server at ${location}: ${why}${attempts > 1 ? ` (${attempts} attempts)` : ''}`, { cause: err });
}
