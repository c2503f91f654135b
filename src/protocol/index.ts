/**
 * protocol — the HTTP API between the client backend and `blockrep serve`: paths, headers,
 * content types, limits and the zod schemas of every JSON body. Shared by both sides.
 */
export { AGE_HEADER, CHUNK_PATCH_TYPE, CONFIG_PATH, ERROR_CODE_HEADER, FLUSH_PATH, IF_OLDER_THAN_HEADER, LIST_PATH, MANIFEST_DELTA_TYPE, MAX_ERROR_BODY_BYTES, MAX_JSON_BODY_BYTES, MAX_LIST_LINE_BYTES, MAX_MANIFEST_DELTA_BYTES, MAX_PATCH_PLAN_ITEMS, OBJECTS_PATH, PATCH_PLANS_PATH, REMOVAL_HEADER, SIZES_PATH, SWEEP_TEMPS_PATH, TOKEN_PATTERN, errorBodySchema, listLineSchema, listPath, objectPath, patchPlanRequestSchema, patchPlanResponseSchema, removalSchema, sizesRequestSchema, sizesResponseSchema, sweepTempsRequestSchema, sweepTempsResponseSchema, type ErrorBody } from './http-protocol.js';
export { MAX_TOKEN_FILE_BYTES, readTokenFile } from './token-file.js';
