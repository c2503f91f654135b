import { blobCodec, CODEC_STORED, encodeChunk, decodePatch, differingSlices, rebuildFromPatch, SLICE_HASH_BYTES } from '../chunk/index.js';
import { MAX_JSON_BODY_BYTES, patchPlanRequestSchema } from '../protocol/index.js';
import type { Repository } from '../repository/index.js';
import { BlockrepError, isBlockrepError } from '../shared/index.js';
import type { ByteBudget } from './byte-budget.js';
import { checkDecodedSize, MAX_CHUNK_BLOB_BYTES } from './chunk-upload.js';
import { readBody, readJson } from './http-io.js';
import type { PatchBase, PatchBaseCache } from './patch-base-cache.js';
import type { RequestContext } from './request-context.js';

/** Base chunks read at once for one patch plan. */
const PLAN_READS_IN_FLIGHT = 4;

/**
 * POST /v1/patch-plans: for each new block, which of its slices differ from the base chunk this
 * repository holds (null when it does not hold the base, or the geometry does not match).
 */
export async function planPatches(bases: PatchBaseCache, ctx: RequestContext): Promise<{ items: Array<string | null> }> {
  const { sliceBytes, items } = await readJson(ctx, patchPlanRequestSchema, MAX_JSON_BODY_BYTES, 'a patch plan');
  const hashes = items.map((item) => Buffer.from(item.hashes, 'base64'));
  if (hashes.some((h) => h.length === 0 || h.length % SLICE_HASH_BYTES !== 0)) throw new BlockrepError('BAD_REQUEST', 'a patch plan item has malformed slice hashes');
  const out = new Array<string | null>(items.length).fill(null);
  let next = 0;
  // A few base reads at a time: the disk works while the event loop hashes.
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      let base: Buffer;
      try {
        base = (await bases.get(items[i]!.base)).raw;
      } catch (err) {
        if (isBlockrepError(err) && (err.code === 'CHUNK_MISSING' || err.code === 'CHUNK_CORRUPT')) continue; // no plan: sent whole
        throw err;
      }
      const h = hashes[i]!;
      if (Math.ceil(base.length / sliceBytes) * SLICE_HASH_BYTES === h.length) out[i] = differingSlices(base, sliceBytes, h).toString('base64');
    }
  };
  await Promise.all(Array.from({ length: Math.min(PLAN_READS_IN_FLIGHT, items.length) }, worker));
  return { items: out };
}

/**
 * PUT of a chunk as a patch: the base is taken from the plans' cache (or read and checked), the
 * carried slices (a chunk blob of their own, checked for size before it is decompressed) are
 * put in place, and the result is stored only if it hashes to the chunk id of the key. Returns
 * the bytes stored.
 */
export async function receiveChunkPatch(repo: Repository, bases: PatchBaseCache, chunkId: string, ctx: RequestContext, budget: ByteBudget): Promise<number> {
  const where = `chunk ${chunkId} (patch)`;
  const release = await budget.acquire(2 * MAX_CHUNK_BLOB_BYTES);
  try {
    const body = await readBody(ctx, MAX_CHUNK_BLOB_BYTES + 1024, where);
    const patch = decodePatch(body, where);
    checkDecodedSize(patch.blob, patch.payloadId);
    let base: PatchBase;
    try {
      base = await bases.get(patch.baseId); // usually still here from the plan
    } catch (err) {
      if (isBlockrepError(err) && err.code === 'CHUNK_MISSING') throw new BlockrepError('BAD_REQUEST', `${where}: the base chunk ${patch.baseId} is not here; send the whole chunk`);
      throw err;
    }
    const raw = rebuildFromPatch(patch, base.raw, where);
    // Random data in the base and in the new slices: compressing the block would only cost time.
    const chunk = encodeChunk(raw, { compress: !(base.incompressible && blobCodec(patch.blob) === CODEC_STORED) });
    if (chunk.id !== chunkId) throw new BlockrepError('CHUNK_CORRUPT', `${where}: the patched block hashes to ${chunk.id}`);
    return await repo.putChunk(chunk);
  } finally {
    release();
  }
}
