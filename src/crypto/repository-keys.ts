import { createHmac, hkdfSync } from 'node:crypto';

/** Bytes of the master key, and of each subkey. */
export const MASTER_KEY_BYTES = 32;

/**
 * The keys an unlocked encrypted repository works with, derived from its master key by
 * HKDF-SHA-256 (salt: the repository id), one per purpose, so that no key serves two:
 * - `chunkIdKey` names chunks: HMAC-SHA-256 of the plaintext block. Equal blocks still get
 *   equal ids (deduplication works within the repository), but whoever holds the repository
 *   cannot compute the id of a block they know and look for it.
 * - `sealKey` seals chunks and manifests (object-seal.ts).
 * Plain bytes, so they can be handed to scan workers with their first message.
 */
export interface RepositoryKeys {
  chunkIdKey: Uint8Array;
  sealKey: Uint8Array;
}

export function deriveRepositoryKeys(masterKey: Uint8Array, repositoryId: string): RepositoryKeys {
  const derive = (purpose: string): Uint8Array => new Uint8Array(hkdfSync('sha256', masterKey, Buffer.from(repositoryId, 'utf8'), `blockrep ${purpose} v1`, 32));
  return { chunkIdKey: derive('chunk-id'), sealKey: derive('seal') };
}

/** The keyed id of a block's plaintext: lower-case hex HMAC-SHA-256. */
export function keyedChunkId(chunkIdKey: Uint8Array, raw: Uint8Array): string {
  return createHmac('sha256', chunkIdKey).update(raw).digest('hex');
}
