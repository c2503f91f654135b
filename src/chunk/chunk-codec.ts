import { createHash } from 'node:crypto';
import { compress } from 'zstd-napi';
import zstd from 'zstd-napi/binding.js';
import { BlockrepError, MAX_BLOCK_SIZE } from '../shared/index.js';
import { CHUNK_ENVELOPE_OVERHEAD, keyedChunkId, openChunkBlob, sealChunkBlob, type RepositoryKeys } from '../crypto/index.js';

/**
 * A chunk is the content of one block, named by the SHA-256 of its uncompressed bytes and
 * stored as a small self-describing blob:
 *
 * | offset | size | field                                   |
 * |--------|------|-----------------------------------------|
 * | 0      | 4    | magic "BRCK"                            |
 * | 4      | 1    | blob format version (1)                 |
 * | 5      | 1    | codec: 0 stored, 1 zstd                 |
 * | 6      | 2    | reserved, 0                             |
 * | 8      | 4    | uncompressed length (u32 BE)            |
 * | 12     | ...  | payload                                 |
 *
 * Incompressible blocks are stored as they are rather than grown by the codec.
 *
 * In an encrypted repository (given its `keys`) a chunk is named by the keyed HMAC-SHA-256 of
 * its plaintext instead, and the blob above is stored sealed (crypto/chunk-envelope.ts).
 */
export const CHUNK_MAGIC = 0x4252434b; // "BRCK"
export const CHUNK_BLOB_VERSION = 1;
export const CHUNK_HEADER_BYTES = 12;
export const CODEC_STORED = 0;
export const CODEC_ZSTD = 1;
/** zstd level 1: ~1 GB/s per core here, and most of the ratio of higher levels on disk data. */
const ZSTD_LEVEL = 1;
/**
 * Decoding is bounded: the content is decompressed into a buffer of the length the header
 * states, itself at most the block size the caller gives (a chunk is never larger than its
 * block), so a small blob that expands to gigabytes fails as CHUNK_CORRUPT having used no more
 * memory than one block. One decompression context, reused (decoding is synchronous, so calls
 * never overlap), used one-shot only: zstd-napi's shared one streams unsized frames, and one
 * cut short left it refusing every later chunk of the process.
 */
let dctx: zstd.DCtx | undefined;

export interface EncodedChunk {
  /** Lower-case hex SHA-256 of the uncompressed bytes (keyed HMAC-SHA-256 when sealed). */
  id: string;
  blob: Uint8Array;
  rawLength: number;
}

export function chunkId(raw: Uint8Array): string {
  return createHash('sha256').update(raw).digest('hex');
}

export function encodeChunk(raw: Uint8Array, options: { compress?: boolean; keys?: RepositoryKeys | undefined } = {}): EncodedChunk {
  const id = options.keys ? keyedChunkId(options.keys.chunkIdKey, raw) : chunkId(raw);
  let codec = CODEC_STORED;
  let payload: Uint8Array = raw;
  if (options.compress !== false) {
    const packed = compress(raw, { compressionLevel: ZSTD_LEVEL });
    if (packed.byteLength < raw.byteLength) {
      codec = CODEC_ZSTD;
      payload = packed;
    }
  }
  const blob = Buffer.allocUnsafe(CHUNK_HEADER_BYTES + payload.byteLength);
  blob.writeUInt32BE(CHUNK_MAGIC, 0);
  blob.writeUInt8(CHUNK_BLOB_VERSION, 4);
  blob.writeUInt8(codec, 5);
  blob.writeUInt16BE(0, 6);
  blob.writeUInt32BE(raw.byteLength, 8);
  blob.set(payload, CHUNK_HEADER_BYTES);
  return { id, blob: options.keys ? sealChunkBlob(options.keys.sealKey, id, blob) : blob, rawLength: raw.byteLength };
}

/** The largest stored chunk for a block of `blockSize` bytes (a sealed one is a little larger). */
export function maxStoredChunkBytes(blockSize: number, sealed: boolean): number {
  return CHUNK_HEADER_BYTES + blockSize + (sealed ? CHUNK_ENVELOPE_OVERHEAD : 0);
}

/** The codec byte of a chunk blob's header (CODEC_STORED or CODEC_ZSTD); the blob is not checked. */
export function blobCodec(blob: Uint8Array): number {
  return blob[5] ?? -1;
}

/**
 * Decodes a stored blob and checks that its content still hashes to `expectedId`.
 * Any mismatch is CHUNK_CORRUPT: damaged data is never handed on.
 */
export function decodeChunk(blob: Uint8Array, expectedId: string, maxRawBytes = MAX_BLOCK_SIZE, keys?: RepositoryKeys): Buffer {
  if (keys) {
    const opened = openChunkBlob(keys.sealKey, expectedId, blob);
    if (opened === undefined) {
      throw new BlockrepError('CHUNK_CORRUPT', `chunk ${expectedId} does not open with this repository's key: it was damaged, stored under another chunk's name, or not sealed for this repository`);
    }
    blob = opened;
  }
  const raw = unpackChunk(blob, expectedId, maxRawBytes);
  const actual = keys ? keyedChunkId(keys.chunkIdKey, raw) : chunkId(raw);
  if (actual !== expectedId) {
    throw new BlockrepError('CHUNK_CORRUPT', `chunk ${expectedId}: content hashes to ${actual}`);
  }
  return raw;
}

/**
 * The content of a blob this process just encoded (its id already computed from the same
 * bytes): checks the form, not the SHA-256. Anything read from storage goes through decodeChunk.
 */
export function unpackChunk(blob: Uint8Array, expectedId: string, maxRawBytes = MAX_BLOCK_SIZE): Buffer {
  const buf = Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength);
  if (buf.byteLength < CHUNK_HEADER_BYTES || buf.readUInt32BE(0) !== CHUNK_MAGIC) {
    throw new BlockrepError('CHUNK_CORRUPT', `chunk ${expectedId}: not a chunk blob (bad magic)`);
  }
  const version = buf.readUInt8(4);
  if (version !== CHUNK_BLOB_VERSION) {
    throw new BlockrepError('CHUNK_CORRUPT', `chunk ${expectedId}: unknown blob version ${version}`);
  }
  const codec = buf.readUInt8(5);
  const rawLength = buf.readUInt32BE(8);
  if (rawLength > Math.min(maxRawBytes, MAX_BLOCK_SIZE)) {
    throw new BlockrepError('CHUNK_CORRUPT', `chunk ${expectedId}: its header says ${rawLength} bytes, more than a block (${Math.min(maxRawBytes, MAX_BLOCK_SIZE)} bytes)`);
  }
  const payload = buf.subarray(CHUNK_HEADER_BYTES);
  let raw: Buffer;
  if (codec === CODEC_STORED) {
    raw = payload;
  } else if (codec === CODEC_ZSTD) {
    raw = Buffer.allocUnsafe(rawLength);
    let produced: number;
    try {
      // Into exactly the length the header states, never what the frames claim: a small frame
      // can claim, or expand to, gigabytes. More is an error ("destination buffer is too small").
      dctx ??= new zstd.DCtx();
      produced = dctx.decompress(raw, payload);
    } catch (err) {
      throw new BlockrepError('CHUNK_CORRUPT', `chunk ${expectedId}: compressed data is damaged or larger than its header says (${rawLength} bytes)`, { cause: err });
    }
    raw = raw.subarray(0, produced);
  } else {
    throw new BlockrepError('CHUNK_CORRUPT', `chunk ${expectedId}: unknown codec ${codec}`);
  }
  if (raw.byteLength !== rawLength) {
    throw new BlockrepError('CHUNK_CORRUPT', `chunk ${expectedId}: length ${raw.byteLength}, header says ${rawLength}`);
  }
  return raw;
}

export function isChunkId(s: string): boolean {
  return /^[0-9a-f]{64}$/.test(s);
}
