import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { chunkId } from '../../src/chunk/chunk-codec.js';
import { decodePatch, differingSlices, encodePatch, PATCH_MAGIC, rebuildFromPatch, sliceHashes } from '../../src/chunk/chunk-patch.js';
import { checkProperty, mutated, replayCorpus, underContract, withMagic, type DecoderContract } from './fuzz-kit.js';

/**
 * Chunk patches (chunk-patch.ts) as a server receives them: decodePatch and the rebuild against
 * the base it holds either give a block of the base's length, or fail with BAD_REQUEST (a bad
 * patch) or CHUNK_CORRUPT (a bad payload blob), whatever geometry the header claims.
 */
const MODULE = 'chunk-patch';
const contract: DecoderContract = { codes: ['BAD_REQUEST', 'CHUNK_CORRUPT'], maxAllocBytes: 64 * 1024 * 1024 };
/** Header fields: magic, version, slice bytes, block length, slice count, first bitmap bytes. */
const FIELDS = [0, 4, 8, 12, 80, 84];

/** A base block, the new block (the base with a few writes), and a slice size. */
const pair = fc
  .record({
    base: fc.uint8Array({ maxLength: 40_000 }),
    writes: fc.array(fc.record({ at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 300 }) }), { maxLength: 6 }),
    sliceBytes: fc.constantFrom(512, 1024, 4096, 16384),
  })
  .map(({ base, writes, sliceBytes }) => {
    const next = Buffer.from(base);
    for (const w of writes) if (next.length > 0) Buffer.from(w.bytes).copy(next, w.at % next.length);
    return { base: Buffer.from(base), next, sliceBytes };
  });

function patchOf({ base, next, sliceBytes }: { base: Buffer; next: Buffer; sliceBytes: number }): Buffer {
  const bitmap = differingSlices(base, sliceBytes, sliceHashes(next, sliceBytes));
  return encodePatch(next, sliceBytes, chunkId(base), bitmap);
}

describe('chunk patches under arbitrary bytes', () => {
  it('replays its corpus within the contract', async () => {
    const base = Buffer.alloc(16384, 7);
    await replayCorpus(MODULE, async (bytes) => {
      await underContract(contract, () => rebuildFromPatch(decodePatch(bytes, 'corpus'), base, 'corpus'));
    });
  });

  it('round-trips: the rebuilt block is the new block, carrying only the slices that differ', async () => {
    await checkProperty(MODULE, pair, (p) => {
      const patch = decodePatch(patchOf(p), 'patch');
      expect(patch.baseId).toBe(chunkId(p.base));
      expect(patch.rawLength).toBe(p.next.length);
      expect(rebuildFromPatch(patch, p.base, 'patch').equals(p.next)).toBe(true);
    }, 200);
  });

  it('mutated patches rebuild a block of the base\'s length or fail with a stable code, within bounds', async () => {
    const cases = pair.chain((p) => mutated(fc.constant(patchOf(p)), FIELDS).map((bytes) => ({ base: p.base, bytes })));
    await checkProperty(
      MODULE,
      cases,
      async ({ base, bytes }) => {
        const out = await underContract(contract, () => rebuildFromPatch(decodePatch(bytes, 'patch'), base, 'patch'));
        if (out.ok) expect(out.value.length).toBe(base.length);
      },
      300,
      ({ bytes }) => bytes,
    );
  });

  it('arbitrary bytes behind the magic fail with a stable code, within bounds', async () => {
    const magic = Buffer.alloc(5);
    magic.writeUInt32BE(PATCH_MAGIC, 0);
    magic[4] = 1;
    const base = Buffer.alloc(4096, 1);
    await checkProperty(MODULE, withMagic(magic, 600), async (bytes) => {
      await underContract(contract, () => rebuildFromPatch(decodePatch(bytes, 'patch'), base, 'patch'));
    }, 300);
  });
});
