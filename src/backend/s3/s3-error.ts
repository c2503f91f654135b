import { BlockrepError, isBlockrepError } from '../../shared/index.js';

/** The parts of an AWS SDK error we look at (S3ServiceException, or a network error it passed on). */
interface SdkError {
  name?: string;
  code?: string;
  message?: string;
  Code?: string;
  $metadata?: { httpStatusCode?: number; attempts?: number };
}

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'EPIPE', 'ETIMEDOUT', 'ENETUNREACH', 'ENETDOWN', 'EHOSTUNREACH', 'EAI_AGAIN', 'ENOTFOUND']);
const CREDENTIAL_CODES = new Set(['InvalidAccessKeyId', 'SignatureDoesNotMatch', 'ExpiredToken', 'TokenRefreshRequired', 'InvalidToken', 'AuthorizationHeaderMalformed', 'RequestTimeTooSkewed']);

/** The HTTP status of an SDK error, if the server answered at all. */
export function s3Status(err: unknown): number | undefined {
  return (err as SdkError | null)?.$metadata?.httpStatusCode;
}

/** The S3 error code (`NoSuchKey`, `PreconditionFailed`…); HEAD answers have no body, so only a name. */
export function s3Code(err: unknown): string | undefined {
  const e = err as SdkError | null;
  return e?.Code ?? e?.name;
}

/** Attempts the SDK made before this error or answer (each one is a billed request). */
export function s3Attempts(thing: unknown): number {
  const n = (thing as SdkError | null)?.$metadata?.attempts;
  return typeof n === 'number' && n > 0 ? n : 1;
}

/** A 404 that means "no such object" rather than "no such bucket". */
export function isMissingObject(err: unknown): boolean {
  return s3Status(err) === 404 && s3Code(err) !== 'NoSuchBucket';
}

export function isPreconditionFailed(err: unknown): boolean {
  return s3Status(err) === 412 || s3Code(err) === 'PreconditionFailed';
}

/**
 * Any failure of an S3 request as a BlockrepError whose code says what the user can do:
 * credentials refused → UNAUTHORIZED, no right → FORBIDDEN (both exit 11), no bucket →
 * REPO_NOT_FOUND (with the command that creates it), unreachable or overloaded after the
 * retries → UNAVAILABLE (exit 12). `what` says which request, `where` the repository.
 */
export function s3Error(err: unknown, what: string, where: { location: string; bucket: string; endpoint: string | undefined }): BlockrepError {
  if (isBlockrepError(err)) return err;
  const e = (err ?? {}) as SdkError;
  const status = s3Status(err);
  const code = s3Code(err);
  const text = e.message && e.message !== 'UnknownError' ? e.message : (code ?? 'unknown error');
  const at = where.endpoint ?? 'AWS S3';
  if (e.name === 'CredentialsProviderError' || /could not load credentials/i.test(text)) {
    return new BlockrepError('UNAUTHORIZED', `access denied: no S3 credentials found for ${where.location} — set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (with ~/.aws/credentials)`, { cause: err });
  }
  if (/region is missing/i.test(text)) {
    return new BlockrepError('USAGE', `no S3 region for ${where.location}: set AWS_REGION (or a region in the AWS_PROFILE's config)`, { cause: err });
  }
  if (code === 'NoSuchBucket') {
    return new BlockrepError(
      'REPO_NOT_FOUND',
      `bucket ${where.bucket} does not exist at ${at}: create it first (e.g. \`aws s3 mb s3://${where.bucket}${where.endpoint ? ` --endpoint-url ${where.endpoint}` : ''}\`), or check the name in ${where.location}`,
      { cause: err },
    );
  }
  if (status === 403 || status === 401 || (code !== undefined && CREDENTIAL_CODES.has(code))) {
    const refused = code !== undefined && CREDENTIAL_CODES.has(code);
    return new BlockrepError(
      refused ? 'UNAUTHORIZED' : 'FORBIDDEN',
      `access denied by ${at} ${what} (${code && code !== 'Unknown' && code !== 'Forbidden' ? code : `HTTP ${status}`}): ` +
        (refused
          ? 'the credentials were refused — check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), that the key is not expired or revoked, and the clock'
          : `the credentials are wrong, expired, or lack the right for this on bucket ${where.bucket} (blockrep needs s3:GetObject, PutObject, DeleteObject and ListBucket under its prefix)`),
      { cause: err },
    );
  }
  if (status === 404) return new BlockrepError('NOT_FOUND', `${what}: not found in ${where.location}`, { cause: err });
  if (status === 412) return new BlockrepError('CHANGED', `${what}: the object changed meanwhile (412)`, { cause: err });
  if (code === 'EntityTooLarge' || status === 413) return new BlockrepError('TOO_LARGE', `${what}: too large for ${at} (${code ?? status})`, { cause: err });
  const attempts = s3Attempts(err);
  const tries = attempts > 1 ? ` after ${attempts} tries` : '';
  if (status !== undefined && (status >= 500 || status === 429 || code === 'SlowDown')) {
    return new BlockrepError('UNAVAILABLE', `${at} ${what}: ${code ?? 'server error'} (HTTP ${status})${tries}; try again later`, { cause: err });
  }
  if (status === undefined && (NETWORK_CODES.has(e.code ?? '') || e.name === 'TimeoutError' || /timed? ?out|socket hang up|ECONN|EPIPE/i.test(text))) {
    return new BlockrepError('UNAVAILABLE', `cannot reach ${at} ${what}: ${text}${tries}; check the endpoint (AWS_ENDPOINT_URL or --s3-endpoint) and the network`, { cause: err });
  }
  return new BlockrepError('IO', `${at} ${what}: ${text}${status !== undefined ? ` (HTTP ${status})` : ''}`, { cause: err });
}
