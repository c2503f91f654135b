/**
 * crypto — client-side encryption of a repository: key files (the master key wrapped under a
 * passphrase with scrypt), subkeys (keyed chunk ids, sealing), and the sealed forms of chunks
 * and manifests. Invariants: nothing here does I/O; every open fails closed (undefined), the caller names what.
 */
export { CHUNK_ENVELOPE_OVERHEAD, chunkEnvelopeProblem, openChunkBlob, sealChunkBlob } from './chunk-envelope.js';
export { DEFAULT_SCRYPT, KEY_FILE_FORMAT, createKeyFile, keyFileSchema, masterKeyCheck, newMasterKey, openKeyFile, sameKey, type KeyFile } from './key-file.js';
export {
  MANIFEST_ENVELOPE_HEADER_BYTES,
  MANIFEST_PAGE_BYTES,
  manifestEnvelopeProblem,
  openManifestPage,
  pageOffset,
  plainBytesOf,
  sealManifestStream,
  sealedBytesOf,
} from './manifest-pages.js';
export { exportMasterKey, importMasterKey } from './master-key-export.js';
export { SEAL_OVERHEAD } from './object-seal.js';
export { MASTER_KEY_BYTES, deriveRepositoryKeys, keyedChunkId, type RepositoryKeys } from './repository-keys.js';
