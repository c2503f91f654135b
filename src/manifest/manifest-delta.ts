import { createHash } from 'node:crypto';
import { BlockrepError } from '../shared/index.js';
import { decodeHeader, ENTRY_BYTES, peekHeaderBytes, type ManifestHeader } from './manifest-format.js';
import type { ManifestReader } from './manifest-reader.js';

/**
 * A new manifest described against its parent: the new header plus only the entries that
 * differ, so what a nightly run uploads grows with the blocks that changed, not with the disk.
 * The receiver composes the full manifest from the parent it holds and checks the result
 * against the digest the sender computed over the manifest it has.
 *
 * | offset  | size | field                                             |
 * |---------|------|---------------------------------------------------|
 * | 0       | 4    | magic "BRMD"                                      |
 * | 4       | 2    | delta format version (1)                          |
 * | 6       | 2    | reserved, 0                                       |
 * | 8       | 4    | header bytes H of the new manifest                |
 * | 12      | 8    | entry count k                                     |
 * | 20      | 32   | SHA-256 digest of the complete new manifest       |
 * | 52      | H    | the new manifest's header                         |
 * | 52+H    | 48·k | entries: u64 block index (ascending), then the 40-byte manifest entry |
 */
export const DELTA_MAGIC = 0x42524d44; // "BRMD"
export const DELTA_FORMAT_VERSION = 1;
const DELTA_FIXED_BYTES = 52;
const DELTA_ENTRY_BYTES = 8 + ENTRY_BYTES;
const COMPOSE_BATCH = 8192;

export function encodeDelta(header: Buffer, digest: Buffer, entries: Array<{ index: number; entry: Buffer }> | { count: number; bytes: Buffer }): Buffer {
  const body = Array.isArray(entries)
    ? Buffer.concat(
        entries.map(({ index, entry }) => {
          const b = Buffer.allocUnsafe(DELTA_ENTRY_BYTES);
          b.writeBigUInt64BE(BigInt(index), 0);
          entry.copy(b, 8, 0, ENTRY_BYTES);
          return b;
        }),
      )
    : entries.bytes;
  const count = Array.isArray(entries) ? entries.length : entries.count;
  const fixed = Buffer.alloc(DELTA_FIXED_BYTES);
  fixed.writeUInt32BE(DELTA_MAGIC, 0);
  fixed.writeUInt16BE(DELTA_FORMAT_VERSION, 4);
  fixed.writeUInt32BE(header.length, 8);
  fixed.writeBigUInt64BE(BigInt(count), 12);
  digest.copy(fixed, 20);
  return Buffer.concat([fixed, header, body]);
}

export interface DecodedDelta {
  header: ManifestHeader;
  headerBytes: Buffer;
  digest: Buffer;
  count: number;
  entries: Buffer;
}

export function decodeDelta(buf: Buffer, where: string): DecodedDelta {
  if (buf.length < DELTA_FIXED_BYTES || buf.readUInt32BE(0) !== DELTA_MAGIC) throw new BlockrepError('BAD_REQUEST', `${where}: not a manifest delta`);
  const version = buf.readUInt16BE(4);
  if (version !== DELTA_FORMAT_VERSION) throw new BlockrepError('REPO_FORMAT', `${where}: manifest delta version ${version} is not supported`);
  const h = buf.readUInt32BE(8);
  const count = buf.readBigUInt64BE(12);
  if (count > BigInt(Number.MAX_SAFE_INTEGER)) throw new BlockrepError('BAD_REQUEST', `${where}: entry count out of range`);
  const k = Number(count);
  if (buf.length !== DELTA_FIXED_BYTES + h + k * DELTA_ENTRY_BYTES) throw new BlockrepError('BAD_REQUEST', `${where}: length does not match its entry count`);
  const headerBytes = buf.subarray(DELTA_FIXED_BYTES, DELTA_FIXED_BYTES + h);
  if (peekHeaderBytes(headerBytes, where) !== h) throw new BlockrepError('BAD_REQUEST', `${where}: header length mismatch`);
  const header = decodeHeader(headerBytes, where);
  const entries = buf.subarray(DELTA_FIXED_BYTES + h);
  let last = -1;
  for (let i = 0; i < k; i++) {
    const index = entries.readBigUInt64BE(i * DELTA_ENTRY_BYTES);
    if (index >= BigInt(header.blockCount) || Number(index) <= last) throw new BlockrepError('BAD_REQUEST', `${where}: delta entries out of order or past the last block`);
    last = Number(index);
  }
  return { header, headerBytes, digest: buf.subarray(20, 52), count: k, entries };
}

/**
 * The chunk ids of the entries a delta carries (32 bytes each, in order): all a receiver must
 * check before it composes, since the other entries are the published parent's.
 */
export function deltaChunkIds(delta: DecodedDelta): Buffer {
  const ids = Buffer.allocUnsafe(delta.count * 32);
  // A delta entry is the block index (8 bytes) and a manifest entry: xxh64 (8), then the id.
  for (let i = 0; i < delta.count; i++) delta.entries.copy(ids, i * 32, i * DELTA_ENTRY_BYTES + 16, (i + 1) * DELTA_ENTRY_BYTES);
  return ids;
}

/**
 * The full manifest bytes of `delta` applied to `parent` (undefined: every entry must be in
 * the delta). Throws before the last piece when the result does not match the sender's digest,
 * so a backend storing the stream stores nothing.
 */
export async function* composeManifest(delta: DecodedDelta, parent: ManifestReader | undefined, where: string): AsyncIterable<Uint8Array> {
  const { header } = delta;
  if (parent && parent.header.blockSize !== header.blockSize) throw new BlockrepError('BAD_REQUEST', `${where}: parent has another block size`);
  const parentBlocks = parent?.header.blockCount ?? 0;
  const digest = createHash('sha256');
  digest.update(delta.headerBytes);
  yield delta.headerBytes;
  let d = 0; // next delta entry (decodeDelta checked they ascend)
  for (let start = 0; start < header.blockCount; start += COMPOSE_BATCH) {
    const count = Math.min(COMPOSE_BATCH, header.blockCount - start);
    const out = Buffer.allocUnsafe(count * ENTRY_BYTES);
    if (parent && start < parentBlocks) {
      const n = Math.min(count, parentBlocks - start);
      const raw = await parent.rawEntries(start, n);
      raw.copy(out, 0);
    }
    for (let i = 0; i < count; i++) {
      const block = start + i;
      const at = d * DELTA_ENTRY_BYTES;
      const next = d < delta.count ? Number(delta.entries.readBigUInt64BE(at)) : Number.POSITIVE_INFINITY;
      if (next === block) {
        delta.entries.copy(out, i * ENTRY_BYTES, at + 8, at + DELTA_ENTRY_BYTES);
        d++;
      } else if (block >= parentBlocks) {
        throw new BlockrepError('BAD_REQUEST', `${where}: block ${block} is neither in the parent nor in the delta`);
      }
    }
    digest.update(out);
    yield out;
  }
  const computed = digest.digest();
  if (!computed.equals(delta.digest)) {
    throw new BlockrepError('BAD_REQUEST', `${where}: the composed manifest does not match the sender's digest (its parent differs from the one the sender used)`);
  }
  yield computed;
}
