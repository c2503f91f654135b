import { encodeChunk } from '../chunk/chunk-codec.js';
import { decodePatch, differingSlices, rebuildFromPatch, SLICE_HASH_BYTES } from '../chunk/chunk-patch.js';
import { MAX_JSON_BODY_BYTES, patchPlanRequestSchema } from '../backend/http/http-protocol.js';
import type { Repository } from '../repository/repository.js';
import { BlockrepError, isBlockrepError } from '../shared/blockrep-error.js';
import type { ByteBudget } from './byte-budget.js';
import { checkDecodedSize, MAX_CHUNK_BLOB_BYTES } from './chunk-upload.js';
import { readBody, readJson } from './http-io.js';
import type { RequestContext } from './request-context.js';

/**
 * POST /v1/patch-plans: for each new block, which of its slices differ from the base chunk this
 * repository holds (null when it does not hold the base, or the geometry does not match).
 */
export async function planPatches(repo: Repository, ctx: RequestContext): Promise<{ items: Array<string | null> }> {
  const { sliceBytes, items } = await readJson(ctx, patchPlanRequestSchema, MAX_JSON_BODY_BYTES, 'a patch plan');
  const out: Array<string | null> = [];
  for (const item of items) {
    const hashes = Buffer.from(item.hashes, 'base64');
    if (hashes.length === 0 || hashes.length % SLICE_HASH_BYTES !== 0) throw new BlockrepError('BAD_REQUEST', 'a patch plan item has malformed slice hashes');
    let base: Buffer;
    try {
      base = await repo.getChunk(item.base);
    } catch (err) {
      if (isBlockrepError(err) && (err.code === 'CHUNK_MISSING' || err.code === 'CHUNK_CORRUPT')) {
        out.push(null);
        continue;
      }
      throw err;
    }
    out.push(Math.ceil(base.length / sliceBytes) * SLICE_HASH_BYTES === hashes.length ? differingSlices(base, sliceBytes, hashes).toString('base64') : null);
  }
  return { items: out };
}

/**
 * PUT of a chunk as a patch: the base is read and checked, the carried slices (a chunk blob of
 * their own, checked for size before it is decompressed) are put in place, and the result is
 * stored only if it hashes to the chunk id of the key. Returns the bytes stored.
 */
export async function receiveChunkPatch(repo: Repository, chunkId: string, ctx: RequestContext, budget: ByteBudget): Promise<number> {
  const where = `chunk ${chunkId} (patch)`;
  const release = await budget.acquire(2 * MAX_CHUNK_BLOB_BYTES);
  try {
    const body = await readBody(ctx, MAX_CHUNK_BLOB_BYTES + 1024, where);
    const patch = decodePatch(body, where);
    checkDecodedSize(patch.blob, patch.payloadId);
    let base: Buffer;
    try {
      base = await repo.getChunk(patch.baseId);
    } catch (err) {
      if (isBlockrepError(err) && err.code === 'CHUNK_MISSING') throw new BlockrepError('BAD_REQUEST', `${where}: the base chunk ${patch.baseId} is not here; send the whole chunk`);
      throw err;
    }
    const raw = rebuildFromPatch(patch, base, where);
    const chunk = encodeChunk(raw);
    if (chunk.id !== chunkId) throw new BlockrepError('CHUNK_CORRUPT', `${where}: the patched block hashes to ${chunk.id}`);
    return await repo.putChunk(chunk);
  } finally {
    release();
  }
}
