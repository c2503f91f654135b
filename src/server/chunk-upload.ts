import { MAX_BLOCK_SIZE, BlockrepError } from '../shared/index.js';
import zstd from 'zstd-napi/binding.js';
import { blobCodec, CHUNK_HEADER_BYTES, CHUNK_MAGIC, CODEC_ZSTD, decodeChunk, type EncodedChunk } from '../chunk/index.js';
import type { Repository } from '../repository/index.js';
import { CHUNK_ENVELOPE_OVERHEAD, chunkEnvelopeProblem } from '../crypto/index.js';
import { isBlockrepError } from '../shared/index.js';
import { readBody } from './http-io.js';
import type { RequestContext } from './request-context.js';

/** A chunk holds one block: never more than the largest block size. */
export const MAX_CHUNK_RAW_BYTES = MAX_BLOCK_SIZE;
/** A chunk blob: its header and at most the raw block (incompressible blocks are stored). */
export const MAX_CHUNK_BLOB_BYTES = CHUNK_HEADER_BYTES + MAX_CHUNK_RAW_BYTES;
/** A sealed chunk (encrypted repository): the blob and its envelope. */
export const MAX_SEALED_CHUNK_BYTES = MAX_CHUNK_BLOB_BYTES + CHUNK_ENVELOPE_OVERHEAD;

/**
 * PUT of a chunk: the server trusts no digest the client claims. The blob is read (bounded),
 * decoded and re-hashed; only a blob whose content hashes to the id in its key is stored.
 * Returns the bytes stored.
 */
export async function receiveChunk(repo: Repository, chunkId: string, ctx: RequestContext): Promise<number> {
  if (repo.encrypted) {
    // No key here: the content cannot be re-hashed, only the envelope's form and size checked.
    const sealed = await readBody(ctx, MAX_SEALED_CHUNK_BYTES, 'a sealed chunk');
    const problem = chunkEnvelopeProblem(sealed, MAX_CHUNK_BLOB_BYTES);
    if (problem !== undefined) throw new BlockrepError('CHUNK_CORRUPT', `chunk ${chunkId}: ${problem}`);
    return storeChunk(repo, { id: chunkId, blob: sealed, rawLength: 0 }, ctx);
  }
  const blob = await readBody(ctx, MAX_CHUNK_BLOB_BYTES, 'a chunk');
  checkDecodedSize(blob, chunkId);
  const raw = decodeChunk(blob, chunkId); // CHUNK_CORRUPT on any mismatch
  return storeChunk(repo, { id: chunkId, blob, rawLength: raw.length }, ctx);
}

/**
 * Stores a checked chunk unless the repository already holds it whole: then it is not
 * rewritten, only touched, as `POST /v1/sizes` with touch does for a dedup hit (see "Uploads of
 * a chunk already stored" in docs/design/safety.md for why gc needs that touch and why it
 * lets a writer keep nothing alive that it could not keep by uploading). A stored copy that is
 * damaged is replaced. Returns the bytes stored (those already there, if it was).
 */
export async function storeChunk(repo: Repository, chunk: EncodedChunk, ctx: RequestContext): Promise<number> {
  const [present] = await repo.hasChunks([chunk.id], { touch: true });
  if (present) {
    try {
      const stored = await repo.readChunkBlob(chunk.id);
      await ctx.lease.ensure(ctx.lease.heldBytes + stored.length);
      if (Buffer.from(chunk.blob).equals(stored)) return stored.length;
      // A sealed copy cannot be opened here: kept if it is well formed (verify with the key says more).
      if (repo.encrypted ? chunkEnvelopeProblem(stored, MAX_CHUNK_BLOB_BYTES) === undefined : decodeChunk(stored, chunk.id).length === chunk.rawLength) return stored.length;
    } catch (err) {
      // Gone meanwhile (gc moved it aside) or damaged: written anew below.
      if (!isBlockrepError(err) || (err.code !== 'CHUNK_MISSING' && err.code !== 'CHUNK_CORRUPT')) throw err;
    }
  }
  return repo.putChunk(chunk);
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
