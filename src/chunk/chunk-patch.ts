import { createHash } from 'node:crypto';
import { BlockrepError } from '../shared/index.js';
import { decodeChunk, encodeChunk } from './chunk-codec.js';

/**
 * A changed block sent as a patch against the chunk the same block had in the parent version:
 * only the slices that differ travel, so the bytes on the wire follow what the guest wrote, not
 * the block size. The receiver rebuilds the whole block from the base it holds and stores it
 * only if it hashes to the new chunk's id.
 *
 * | offset | size     | field                                                    |
 * |--------|----------|----------------------------------------------------------|
 * | 0      | 4        | magic "BRCP"                                             |
 * | 4      | 1        | patch format version (1)                                 |
 * | 5      | 3        | reserved, 0                                              |
 * | 8      | 4        | slice bytes                                              |
 * | 12     | 4        | length of the new block                                  |
 * | 16     | 32       | base chunk id                                            |
 * | 48     | 32       | payload id: SHA-256 of the carried slices, concatenated  |
 * | 80     | 4        | slice count n                                            |
 * | 84     | ⌈n/8⌉    | bitmap of the slices carried (bit i of byte i/8, LSB first) |
 * | ...    | rest     | the carried slices as one chunk blob (chunk-codec)       |
 */
export const PATCH_MAGIC = 0x42524350; // "BRCP"
export const PATCH_FORMAT_VERSION = 1;
const FIXED_BYTES = 84;
export const SLICE_HASH_BYTES = 8;
export const DEFAULT_SLICE_BYTES = 16 * 1024;
const MAX_SLICES = 4096;

/** What the receiver compares against its base: 8 bytes of SHA-256 per slice. */
export function sliceHashes(raw: Uint8Array, sliceBytes: number): Buffer {
  const n = Math.ceil(raw.byteLength / sliceBytes);
  const out = Buffer.allocUnsafe(n * SLICE_HASH_BYTES);
  for (let i = 0; i < n; i++) {
    const digest = createHash('sha256')
      .update(raw.subarray(i * sliceBytes, Math.min(raw.byteLength, (i + 1) * sliceBytes)))
      .digest();
    digest.copy(out, i * SLICE_HASH_BYTES, 0, SLICE_HASH_BYTES);
  }
  return out;
}

/** The slices whose hash differs from `hashes` (bitmap), computed by the holder of `base`. */
export function differingSlices(base: Uint8Array, sliceBytes: number, hashes: Buffer): Buffer {
  const mine = sliceHashes(base, sliceBytes);
  const n = hashes.length / SLICE_HASH_BYTES;
  const bitmap = Buffer.alloc(Math.ceil(n / 8));
  for (let i = 0; i < n; i++) {
    if (mine.compare(hashes, i * SLICE_HASH_BYTES, (i + 1) * SLICE_HASH_BYTES, i * SLICE_HASH_BYTES, (i + 1) * SLICE_HASH_BYTES) !== 0) bitmap[i >> 3]! |= 1 << (i & 7);
  }
  return bitmap;
}

export function encodePatch(raw: Uint8Array, sliceBytes: number, baseId: string, bitmap: Uint8Array): Buffer {
  const n = Math.ceil(raw.byteLength / sliceBytes);
  const carried: Uint8Array[] = [];
  for (let i = 0; i < n; i++) {
    if ((bitmap[i >> 3]! >> (i & 7)) & 1) carried.push(raw.subarray(i * sliceBytes, Math.min(raw.byteLength, (i + 1) * sliceBytes)));
  }
  const payload = encodeChunk(Buffer.concat(carried));
  const head = Buffer.alloc(FIXED_BYTES + Math.ceil(n / 8));
  head.writeUInt32BE(PATCH_MAGIC, 0);
  head.writeUInt8(PATCH_FORMAT_VERSION, 4);
  head.writeUInt32BE(sliceBytes, 8);
  head.writeUInt32BE(raw.byteLength, 12);
  Buffer.from(baseId, 'hex').copy(head, 16);
  Buffer.from(payload.id, 'hex').copy(head, 48);
  head.writeUInt32BE(n, 80);
  Buffer.from(bitmap.subarray(0, Math.ceil(n / 8))).copy(head, FIXED_BYTES);
  return Buffer.concat([head, payload.blob]);
}

export interface DecodedPatch {
  sliceBytes: number;
  rawLength: number;
  baseId: string;
  payloadId: string;
  sliceCount: number;
  bitmap: Buffer;
  /** The chunk blob of the carried slices; decode with decodeChunk(blob, payloadId). */
  blob: Buffer;
}

export function decodePatch(buf: Buffer, where: string): DecodedPatch {
  if (buf.length < FIXED_BYTES || buf.readUInt32BE(0) !== PATCH_MAGIC) throw new BlockrepError('BAD_REQUEST', `${where}: not a chunk patch`);
  if (buf.readUInt8(4) !== PATCH_FORMAT_VERSION) throw new BlockrepError('BAD_REQUEST', `${where}: chunk patch version ${buf.readUInt8(4)} is not supported`);
  const sliceBytes = buf.readUInt32BE(8);
  const rawLength = buf.readUInt32BE(12);
  const sliceCount = buf.readUInt32BE(80);
  if (sliceBytes < 512 || sliceCount > MAX_SLICES || sliceCount !== Math.ceil(rawLength / sliceBytes)) {
    throw new BlockrepError('BAD_REQUEST', `${where}: inconsistent slice geometry`);
  }
  const bitmapBytes = Math.ceil(sliceCount / 8);
  if (buf.length < FIXED_BYTES + bitmapBytes) throw new BlockrepError('BAD_REQUEST', `${where}: truncated`);
  return {
    sliceBytes,
    rawLength,
    baseId: buf.toString('hex', 16, 48),
    payloadId: buf.toString('hex', 48, 80),
    sliceCount,
    bitmap: buf.subarray(FIXED_BYTES, FIXED_BYTES + bitmapBytes),
    blob: buf.subarray(FIXED_BYTES + bitmapBytes),
  };
}

/** The new block: the base with the carried slices put in place. `payload` is the decoded blob. */
export function applyPatch(patch: DecodedPatch, base: Buffer, payload: Buffer, where: string): Buffer {
  if (base.length !== patch.rawLength) throw new BlockrepError('BAD_REQUEST', `${where}: the base chunk has ${base.length} bytes, the patch is for ${patch.rawLength}`);
  const out = Buffer.from(base);
  let at = 0;
  for (let i = 0; i < patch.sliceCount; i++) {
    if (!((patch.bitmap[i >> 3]! >> (i & 7)) & 1)) continue;
    const start = i * patch.sliceBytes;
    const len = Math.min(patch.rawLength, start + patch.sliceBytes) - start;
    if (at + len > payload.length) throw new BlockrepError('BAD_REQUEST', `${where}: the payload is shorter than its bitmap says`);
    payload.copy(out, start, at, at + len);
    at += len;
  }
  if (at !== payload.length) throw new BlockrepError('BAD_REQUEST', `${where}: the payload is longer than its bitmap says`);
  return out;
}

/** Decodes and applies in one step for a receiver that holds the base (checked) and the patch. */
export function rebuildFromPatch(patch: DecodedPatch, base: Buffer, where: string): Buffer {
  return applyPatch(patch, base, decodeChunk(patch.blob, patch.payloadId), where);
}
