import { z } from 'zod';
import { errorCodes } from '../shared/index.js';

/**
 * The wire contract between HttpBackend and `blockrep serve`: one generic object API that
 * mirrors the Backend interface, so both ends run the same repository code.
 *
 *   GET    /v1/config                 the repository's blockrep.json, checked
 *   HEAD   /v1/objects/<key>          size (Content-Length), 404 when missing
 *   GET    /v1/objects/<key>          bytes; `Range: bytes=a-b` or `bytes=a-` → 206
 *   PUT    /v1/objects/<key>          store; `If-None-Match: *` = exclusive (412 EXISTS); a
 *                                      manifest may come as a delta against its parent
 *                                      (Content-Type MANIFEST_DELTA_TYPE, manifest-delta.ts)
 *   DELETE /v1/objects/<key>          remove (204 also when missing); a chunk with
 *                                      IF_OLDER_THAN_HEADER only if older (gc), REMOVAL_HEADER says what happened
 *   GET    /v1/list?prefix=<prefix>   NDJSON lines {key,size,mtimeMs}, then {end:true,count}
 *   POST   /v1/sizes                  {keys:[…], touch?} → {sizes:[n|null…]}; touch refreshes the
 *                                      modification time of the chunks found (a dedup hit)
 *   POST   /v1/sweep-temps            {olderThanMs} → {files, bytes}: stale temporary files removed (gc)
 *   POST   /v1/flush                  make earlier writes durable (204)
 *   POST   /v1/patch-plans            {sliceBytes, items:[{base, hashes}]} → {items:[bitmap|null]}:
 *                                      which slices of each new block differ from its base chunk
 *   PUT    /v1/objects/chunks/…       may carry a chunk patch (CHUNK_PATCH_TYPE, chunk-patch.ts)
 *
 * Each key segment travels percent-encoded (encodeURIComponent), so `%2F` in a disk's path
 * component goes as `%252F`; the server decodes each segment exactly once.
 */
export const API_PREFIX = '/v1';
export const OBJECTS_PATH = `${API_PREFIX}/objects/`;
export const LIST_PATH = `${API_PREFIX}/list`;
export const SIZES_PATH = `${API_PREFIX}/sizes`;
export const FLUSH_PATH = `${API_PREFIX}/flush`;
export const CONFIG_PATH = `${API_PREFIX}/config`;
export const SWEEP_TEMPS_PATH = `${API_PREFIX}/sweep-temps`;

/** DELETE of a chunk: remove it only if last modified before this time (ms since the epoch). */
export const IF_OLDER_THAN_HEADER = 'x-blockrep-if-older-than-ms';
/** The answer to such a DELETE: removed, young (kept) or missing. */
export const REMOVAL_HEADER = 'x-blockrep-removal';
export const removalSchema = z.enum(['removed', 'young', 'missing']);
export const sweepTempsRequestSchema = z.object({ olderThanMs: z.number().int().nonnegative() }).strict();
export const sweepTempsResponseSchema = z.object({ files: z.number().int().nonnegative(), bytes: z.number().int().nonnegative() }).strict();

export const PATCH_PLANS_PATH = `${API_PREFIX}/patch-plans`;
export const CHUNK_PATCH_TYPE = 'application/x-blockrep-chunk-patch';
export const MAX_PATCH_PLAN_ITEMS = 1024;
export const patchPlanRequestSchema = z
  .object({
    sliceBytes: z.number().int().min(512).max(16 * 1024 * 1024),
    items: z
      .array(z.object({ base: z.string().regex(/^[0-9a-f]{64}$/), hashes: z.string().max(44_000) }).strict())
      .max(MAX_PATCH_PLAN_ITEMS),
  })
  .strict();
export const patchPlanResponseSchema = z.object({ items: z.array(z.string().max(1024).nullable()) }).strict();

/** A manifest PUT whose body is a delta against the parent version named in its header. */
export const MANIFEST_DELTA_TYPE = 'application/x-blockrep-manifest-delta';
/** The largest delta accepted; a client with a larger change sends the whole manifest. */
export const MAX_MANIFEST_DELTA_BYTES = 48 * 1024 * 1024;

/**
 * HEAD/GET of a lock carry its age: ms since it was last written, by the server's clock, so a
 * client judges a lock's lease without trusting its own clock or the holder's.
 */
export const AGE_HEADER = 'x-blockrep-age-ms';

/** Every error response names its BlockrepError code here too (HEAD responses have no body). */
export const ERROR_CODE_HEADER = 'x-blockrep-code';

/** Keys per POST /v1/sizes; a request with more is refused (413). */
export const MAX_SIZES_KEYS = 10_000;
/** Any JSON request body. */
export const MAX_JSON_BODY_BYTES = 1024 * 1024;
/** An error body the client reads; anything longer is cut. */
export const MAX_ERROR_BODY_BYTES = 64 * 1024;
/** One NDJSON line of a listing. */
export const MAX_LIST_LINE_BYTES = 4096;

/** Access tokens: "brt_" + 43 base64url characters (32 random bytes). */
export const TOKEN_PATTERN = /^brt_[A-Za-z0-9_-]{43}$/;

export function objectPath(key: string): string {
  return OBJECTS_PATH + key.split('/').map(encodeURIComponent).join('/');
}

export function listPath(prefix: string): string {
  return `${LIST_PATH}?prefix=${encodeURIComponent(prefix)}`;
}

export const errorBodySchema = z.object({
  code: z.enum(errorCodes),
  message: z.string().max(MAX_ERROR_BODY_BYTES),
  details: z.record(z.string(), z.unknown()).optional(),
});
export type ErrorBody = z.infer<typeof errorBodySchema>;

export const sizesRequestSchema = z.object({ keys: z.array(z.string().max(512)).max(MAX_SIZES_KEYS), touch: z.boolean().optional() }).strict();
export const sizesResponseSchema = z.object({ sizes: z.array(z.number().int().nonnegative().nullable()) }).strict();

export const listEntrySchema = z.object({ key: z.string().max(512), size: z.number().int().nonnegative(), mtimeMs: z.number().int().nonnegative().optional() }).strict();
export const listEndSchema = z.object({ end: z.literal(true), count: z.number().int().nonnegative() }).strict();
export const listLineSchema = z.union([listEntrySchema, listEndSchema]);
