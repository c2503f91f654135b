import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { blobCodec, CODEC_STORED, encodeChunk, decodePatch, rebuildFromPatch, sliceHashes, SLICE_HASH_BYTES } from '../chunk/index.js';
import { MAX_JSON_BODY_BYTES, patchPlanRequestSchema } from '../protocol/index.js';
import type { Repository } from '../repository/index.js';
import { BlockrepError, isBlockrepError } from '../shared/index.js';
import { checkDecodedSize, MAX_CHUNK_BLOB_BYTES, storeChunk } from './chunk-upload.js';
import { readBody, readJson } from './http-io.js';
import type { PatchBase, PatchBaseCache } from './patch-base-cache.js';
import type { RequestContext } from './request-context.js';

/**
 * POST /v1/patch-plans: for each new block, which of its slices differ from the base chunk this
 * repository holds (null when it does not hold the base, or the geometry does not match, or the
 * plan's work is used up). The work is bounded whatever the plan says: each base is read,
 * decoded and sliced once per plan however many items name it; at most `maxBaseBytes` of bases
 * are decoded (later items get null: sent whole), each held against the request's budget; plans
 * take turns base by base, and the event loop gets a turn between bases; and the plan stops
 * when its client hangs up.
 */
export async function planPatches(bases: PatchBaseCache, ctx: RequestContext, maxBaseBytes: number): Promise<{ items: Array<string | null> }> {
  const { sliceBytes, items } = await readJson(ctx, patchPlanRequestSchema, MAX_JSON_BODY_BYTES, 'a patch plan');
  const hashes = items.map((item) => Buffer.from(item.hashes, 'base64'));
  if (hashes.some((h) => h.length === 0 || h.length % SLICE_HASH_BYTES !== 0)) throw new BlockrepError('BAD_REQUEST', 'a patch plan item has malformed slice hashes');
  const out = new Array<string | null>(items.length).fill(null);
  const byBase = new Map<string, number[]>();
  items.forEach((item, i) => {
    const list = byBase.get(item.base);
    if (list) list.push(i);
    else byBase.set(item.base, [i]);
  });
  const kept = ctx.lease.heldBytes;
  let budgetLeft = maxBaseBytes;
  for (const [baseId, indexes] of byBase) {
    await yieldToLoop();
    if (ctx.res.destroyed) throw clientGone(ctx);
    const used = await bases.inTurn(async () => {
      if (ctx.res.destroyed) throw clientGone(ctx);
      let base: PatchBase | undefined;
      try {
        base = await bases.get(baseId, budgetLeft);
      } catch (err) {
        if (isBlockrepError(err) && (err.code === 'CHUNK_MISSING' || err.code === 'CHUNK_CORRUPT')) return 0; // no plan: sent whole
        throw err;
      }
      if (base === undefined) return 0; // larger than what is left of this plan's work
      await ctx.lease.ensure(kept + base.raw.length);
      const mine = sliceHashes(base.raw, sliceBytes);
      for (const i of indexes) {
        const h = hashes[i]!;
        if (h.length === mine.length) out[i] = bitmapOf(mine, h).toString('base64');
      }
      ctx.lease.shrink(kept);
      return base.raw.length;
    });
    budgetLeft -= used;
  }
  return { items: out };
}

/** Which slices differ: bit i set when the i-th 8-byte hashes of `mine` and `theirs` differ. */
function bitmapOf(mine: Buffer, theirs: Buffer): Buffer {
  const n = mine.length / SLICE_HASH_BYTES;
  const bitmap = Buffer.alloc(Math.ceil(n / 8));
  for (let i = 0; i < n; i++) {
    const at = i * SLICE_HASH_BYTES;
    if (mine.compare(theirs, at, at + SLICE_HASH_BYTES, at, at + SLICE_HASH_BYTES) !== 0) bitmap[i >> 3]! |= 1 << (i & 7);
  }
  return bitmap;
}

/** The client hung up: the work it asked for stops here (logged as aborted, not as a failure). */
function clientGone(ctx: RequestContext): BlockrepError {
  ctx.aborted = true;
  return new BlockrepError('INTERRUPTED', 'the client hung up');
}

/**
 * PUT of a chunk as a patch: the base is taken from the plans' cache (or read and checked), the
 * carried slices (a chunk blob of their own, checked for size before it is decompressed) are
 * put in place, and the result is stored only if it hashes to the chunk id of the key. Returns
 * the bytes stored.
 */
export async function receiveChunkPatch(repo: Repository, bases: PatchBaseCache, chunkId: string, ctx: RequestContext): Promise<number> {
  const where = `chunk ${chunkId} (patch)`;
  const body = await readBody(ctx, MAX_CHUNK_BLOB_BYTES + 1024, where);
  const patch = decodePatch(body, where);
  checkDecodedSize(patch.blob, patch.payloadId);
  let base: PatchBase;
  try {
    base = (await bases.get(patch.baseId))!; // usually still here from the plan
  } catch (err) {
    if (isBlockrepError(err) && err.code === 'CHUNK_MISSING') throw new BlockrepError('BAD_REQUEST', `${where}: the base chunk ${patch.baseId} is not here; send the whole chunk`);
    throw err;
  }
  // The rebuilt block and its encoding, besides the body.
  await ctx.lease.ensure(ctx.lease.heldBytes + 2 * base.raw.length);
  const raw = rebuildFromPatch(patch, base.raw, where);
  // Random data in the base and in the new slices: compressing the block would only cost time.
  const chunk = encodeChunk(raw, { compress: !(base.incompressible && blobCodec(patch.blob) === CODEC_STORED) });
  if (chunk.id !== chunkId) throw new BlockrepError('CHUNK_CORRUPT', `${where}: the patched block hashes to ${chunk.id}`);
  return storeChunk(repo, chunk, ctx);
}
