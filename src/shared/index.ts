/**
 * shared — small rules and helpers every folder may use: error codes (BlockrepError), disk ids
 * and VM names, version ids, block sizes, sizes and durations, rate limiting, durable writes.
 * Imports nothing from other folders.
 */
export { MAX_BLOCK_SIZE, checkBlockSize, isValidBlockSize } from './block-size.js';
export { ManualClock, systemClock, type Clock, type ClockTimer } from './clock.js';
export { BlockrepError, errorCodes, isBlockrepError, systemErrorCode, toBlockrepError, wrapSystemError, type ErrorCode } from './blockrep-error.js';
export { assertDiskId, defaultDiskIdForImage, diskIdFromPathComponent, diskIdProblem, diskIdToPathComponent, vmNameProblem } from './disk-id.js';
export { formatDuration, parseDuration } from './duration.js';
export { DEFAULT_LISTEN, isLoopback, parseListenAddress, urlFor, type ListenAddress } from './listen-address.js';
export { currentHolder, holderIsGone, lockHolderSchema, type LockHolder } from './lock-holder.js';
export { RateLimiter, throttle } from './rate-limiter.js';
export { readSmallFile } from './read-small-file.js';
export { formatBytes, parseSize } from './size.js';
export { DEFAULT_SYNC_LEVEL, parseSyncLevel, SYNC_LEVELS, type SyncLevel } from './sync-level.js';
export { TaskPool } from './task-pool.js';
export { assertVersionId, isVersionId, newVersionId, versionIdTime } from './version-id.js';
export { writeFileDurably } from './write-file-durably.js';
