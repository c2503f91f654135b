import { createHash } from 'node:crypto';
import type { Backend } from '../backend/index.js';
import { BlockrepError } from '../shared/index.js';
import { decodeHeader, DIGEST_BYTES, ENTRY_BYTES, manifestBytes, peekHeaderBytes, type ManifestHeader } from './manifest-format.js';

const VERIFY_READ_BYTES = 4 * 1024 * 1024;
export const ZERO_CHUNK_ID = Buffer.alloc(32);

export interface ManifestEntries {
  startBlock: number;
  hashes: BigUint64Array;
  /** 32 bytes per block; all zero for a zero block. */
  ids: Buffer;
}

/**
 * Reads a stored manifest. open() checks the whole object against its digest before anything
 * in it is trusted; entries are then read in ranges, so memory stays bounded.
 */
export class ManifestReader {
  private constructor(
    private readonly backend: Backend,
    readonly key: string,
    readonly header: ManifestHeader,
  ) {}

  static async open(backend: Backend, key: string): Promise<ManifestReader> {
    const where = `manifest ${key}`;
    const size = await backend.size(key);
    if (size === undefined) throw new BlockrepError('VERSION_NOT_FOUND', `${where} does not exist`);
    if (size < 12 + DIGEST_BYTES) throw new BlockrepError('REPO_CORRUPT', `${where}: truncated (${size} bytes)`);
    const first = await backend.read(key, 0, Math.min(size, 12));
    const headerBytes = peekHeaderBytes(first, where);
    if (size < headerBytes + DIGEST_BYTES) throw new BlockrepError('REPO_CORRUPT', `${where}: truncated (${size} bytes)`);
    const header = decodeHeader(await backend.read(key, 0, headerBytes), where);
    if (manifestBytes(header) !== size) {
      throw new BlockrepError('REPO_CORRUPT', `${where}: ${size} bytes, expected ${manifestBytes(header)} for ${header.blockCount} blocks`);
    }
    const digest = createHash('sha256');
    const body = size - DIGEST_BYTES;
    for (let pos = 0; pos < body; pos += VERIFY_READ_BYTES) {
      digest.update(await backend.read(key, pos, Math.min(VERIFY_READ_BYTES, body - pos)));
    }
    const stored = await backend.read(key, body, DIGEST_BYTES);
    if (!digest.digest().equals(stored)) throw new BlockrepError('REPO_CORRUPT', `${where}: digest mismatch, the manifest is damaged`);
    return new ManifestReader(backend, key, header);
  }

  /** The header alone, for listings: checked for form, not against the digest. */
  static async readHeader(backend: Backend, key: string): Promise<ManifestHeader> {
    const where = `manifest ${key}`;
    const first = await backend.read(key, 0, 12);
    return decodeHeader(await backend.read(key, 0, peekHeaderBytes(first, where)), where);
  }

  /** The stored 40-byte entries of [startBlock, startBlock + count), clipped to the manifest. */
  async rawEntries(startBlock: number, count: number): Promise<Buffer> {
    const n = Math.max(0, Math.min(count, this.header.blockCount - startBlock));
    const raw = await this.backend.read(this.key, this.header.headerBytes + startBlock * ENTRY_BYTES, n * ENTRY_BYTES);
    if (raw.length !== n * ENTRY_BYTES) throw new BlockrepError('REPO_CORRUPT', `manifest ${this.key}: short read of entries`);
    return raw;
  }

  async entries(startBlock: number, count: number): Promise<ManifestEntries> {
    const raw = await this.rawEntries(startBlock, count);
    const n = raw.length / ENTRY_BYTES;
    const hashes = new BigUint64Array(n);
    const ids = Buffer.allocUnsafe(n * 32);
    for (let i = 0; i < n; i++) {
      hashes[i] = raw.readBigUInt64BE(i * ENTRY_BYTES);
      raw.copy(ids, i * 32, i * ENTRY_BYTES + 8, i * ENTRY_BYTES + ENTRY_BYTES);
    }
    return { startBlock, hashes, ids };
  }

  async *batches(batchBlocks = 8192): AsyncIterable<ManifestEntries> {
    for (let start = 0; start < this.header.blockCount; start += batchBlocks) {
      yield await this.entries(start, batchBlocks);
    }
  }
}

export function isZeroId(ids: Buffer, index: number): boolean {
  return ids.compare(ZERO_CHUNK_ID, 0, 32, index * 32, index * 32 + 32) === 0;
}

export function idHex(ids: Buffer, index: number): string {
  return ids.toString('hex', index * 32, index * 32 + 32);
}
