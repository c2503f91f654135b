/**
 * repository — the domain layer over a Backend: versions, chunks, disk locks (leases),
 * retention rules and the manifest cache; `openRepository` picks the backend for a location.
 * Invariants: chunks are durable before the manifest that names them; one writer per disk; an
 * encrypted repository is read or written only unlocked (its key files, repository-key-store.ts).
 */
export { MAX_LEASE_MS } from './disk-lock.js';
export { initEncryptedRepository } from './init-repository.js';
export { openBackend, openRepository, type OpenRepositoryOptions } from './open-repository.js';
export { CONFIG_KEY, KEYS_PREFIX, repositoryConfigSchema, type RepositoryConfig } from './repository-config.js';
export { addKeyFile, defaultKeyLabel, keyFileKey, listKeyFiles, removeKeyFile, unlockWithMasterKey, unlockWithPassphrase } from './repository-key-store.js';
export { Repository } from './repository.js';
export { isEmptyPolicy, parseRetentionPolicy, retentionPolicySchema, selectVersionsToKeep, type KeepReason, type RetentionPolicy } from './retention-policy.js';
