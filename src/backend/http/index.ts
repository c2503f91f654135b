/**
 * backend/http — the Backend that speaks to a `blockrep serve` (undici, retries, resumable
 * bodies) and the client's credentials. Loaded only for http(s):// repositories: it costs
 * every local command start-up time.
 */
export { HttpBackend } from './http-backend.js';
export { loadAccessToken, readCaFile } from './http-credentials.js';
