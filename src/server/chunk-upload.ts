import { MAX_BLOCK_SIZE, BlockrepError } from '../shared/index.js';
import zstd from 'zstd-napi/binding.js';
import { blobCodec, CHUNK_HEADER_BYTES, CHUNK_MAGIC, CODEC_ZSTD, decodeChunk } from '../chunk/index.js';
import type { Repository } from '../repository/index.js';
import type { ByteBudget } from './byte-budget.js';
import { readBody } from './http-io.js';
import type { RequestContext } from './request-context.js';

/** A chunk holds one block: never more than the largest block size. */
export const MAX_CHUNK_RAW_BYTES = MAX_BLOCK_SIZE;
/** A chunk blob: its header and at most the raw block (incompressible blocks are stored). */
export const MAX_CHUNK_BLOB_BYTES = CHUNK_HEADER_BYTES + MAX_CHUNK_RAW_BYTES;

/**
 * PUT of a chunk: the server trusts no digest the client claims. The blob is read (bounded),
 * decoded and re-hashed; only a blob whose content hashes to the id in its key is stored.
 * Returns the bytes stored.
 */
export async function receiveChunk(repo: Repository, chunkId: string, ctx: RequestContext, budget: ByteBudget): Promise<number> {
  const declared = ctx.req.headers['content-length'];
  const release = await budget.acquire(declared === undefined ? MAX_CHUNK_BLOB_BYTES : Math.min(Number(declared) || 0, MAX_CHUNK_BLOB_BYTES));
  try {
    const blob = await readBody(ctx, MAX_CHUNK_BLOB_BYTES, 'a chunk');
    checkDecodedSize(blob, chunkId);
    const raw = decodeChunk(blob, chunkId); // CHUNK_CORRUPT on any mismatch
    return await repo.putChunk({ id: chunkId, blob, rawLength: raw.length });
  } finally {
    release();
  }
}

/**
 * Before decompressing, the sizes the blob claims must be within a block: a small zstd frame
 * can claim (and fill) gigabytes. Every frame must state its content size, and together they
 * must equal the uncompressed length in the chunk header.
 */
export function checkDecodedSize(blob: Buffer, chunkId: string): void {
  if (blob.length < CHUNK_HEADER_BYTES || blob.readUInt32BE(0) !== CHUNK_MAGIC) {
    throw new BlockrepError('CHUNK_CORRUPT', `chunk ${chunkId}: not a chunk blob (bad magic)`);
  }
  const rawLength = blob.readUInt32BE(8);
  if (rawLength > MAX_CHUNK_RAW_BYTES) throw new BlockrepError('CHUNK_CORRUPT', `chunk ${chunkId}: ${rawLength} bytes is larger than a block may be`);
  if (blobCodec(blob) !== CODEC_ZSTD) return;
  let frames = blob.subarray(CHUNK_HEADER_BYTES);
  let total = 0;
  try {
    while (frames.length > 0) {
      const size = zstd.getFrameContentSize(frames);
      if (size === null) throw new Error('frame without a content size');
      total += size;
      if (total > rawLength) break;
      frames = frames.subarray(zstd.findFrameCompressedSize(frames));
    }
  } catch (err) {
    throw new BlockrepError('CHUNK_CORRUPT', `chunk ${chunkId}: compressed data is damaged`, { cause: err });
  }
  if (total !== rawLength) throw new BlockrepError('CHUNK_CORRUPT', `chunk ${chunkId}: compressed frames hold ${total} bytes, the header says ${rawLength}`);
}
