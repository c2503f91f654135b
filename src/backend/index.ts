/**
 * backend — bytes under keys: the Backend interface every store implements (local folder, HTTP
 * client in ./http, more to come), and wrappers that stack on it (rate limit).
 * Invariants: writes are atomic (temp → rename) and durable (fsync, or for deferred writes the
 * next flush's syncfs); exclusive and conditional writes never overwrite a successor. Knows
 * nothing of manifests or chunks.
 */
export { contentTag, type Backend, type BackendObject, type ConditionalRemoval, type SizesOptions, type TempSweep, type WriteOptions } from './backend.js';
export { LocalBackend, type LocalBackendOptions } from './local/local-backend.js';
export { RateLimitedBackend } from './rate-limited-backend.js';
export { releaseBuffer } from './release-buffer.js';
