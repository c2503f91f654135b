/**
 * repository — the domain layer over a Backend: versions, chunks, disk locks (leases),
 * retention rules and the manifest cache; `openRepository` picks the backend for a location.
 * Invariants: chunks are durable before the manifest that names them; one writer per disk.
 */
export { MAX_LEASE_MS } from './disk-lock.js';
export { openRepository, type OpenRepositoryOptions } from './open-repository.js';
export { CONFIG_KEY } from './repository-config.js';
export { Repository } from './repository.js';
export { isEmptyPolicy, parseRetentionPolicy, retentionPolicySchema, selectVersionsToKeep, type KeepReason, type RetentionPolicy } from './retention-policy.js';
