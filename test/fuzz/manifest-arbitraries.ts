import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { blockCountFor, encodeHeader, ENTRY_BYTES, type ManifestMeta } from '../../src/manifest/manifest-format.js';

/** Valid manifests, built in memory the way manifest-writer.ts lays them out. */
export interface ManifestCase {
  blockSize: number;
  imageBytes: number;
  createdMs: number;
  changedBlocks: number;
  zeroBlocks: number;
  storedBytes: number;
  meta: ManifestMeta;
  /** 40 bytes per block. */
  entries: Buffer;
}

const segment = fc.stringMatching(/^[A-Za-z0-9_-][A-Za-z0-9._-]{0,11}$/);

export const manifestMeta: fc.Arbitrary<ManifestMeta> = fc.record({
  diskId: fc.array(segment, { minLength: 1, maxLength: 3 }).map((s) => s.join('/')),
  versionId: fc.constant('20261126T033504.123Z-aaaaaa'),
  parentVersionId: fc.option(fc.constant('20261125T033504.123Z-bbbbbb'), { nil: null }),
  source: fc.oneof(
    fc.record({ kind: fc.constant('image' as const), path: fc.string({ maxLength: 40 }), format: fc.constantFrom('raw' as const, 'qcow2' as const) }),
    fc.record({ kind: fc.constant('live' as const), vm: fc.string({ maxLength: 20 }) }),
  ),
});

export function entriesFor(blocks: number, seed: number): Buffer {
  const out = Buffer.alloc(blocks * ENTRY_BYTES);
  for (let i = 0; i < blocks; i++) {
    // Every fifth block a zero block (id all zero); the others a made-up id and hash.
    out.writeBigUInt64BE(BigInt(seed * 7919 + i), i * ENTRY_BYTES);
    if ((i + seed) % 5 !== 0) createHash('sha256').update(`${seed}:${i}`).digest().copy(out, i * ENTRY_BYTES + 8);
  }
  return out;
}

export const manifestCase: fc.Arbitrary<ManifestCase> = fc
  .record({
    // Block sizes a backup makes: 4 KiB to 16 MiB (shared/block-size.ts).
    blockShift: fc.integer({ min: 12, max: 24 }),
    blocks: fc.integer({ min: 0, max: 200 }),
    tail: fc.nat(),
    createdMs: fc.nat({ max: 2 ** 42 }),
    counts: fc.tuple(fc.nat(), fc.nat(), fc.nat({ max: 2 ** 40 })),
    seed: fc.nat(1000),
    meta: manifestMeta,
  })
  .map(({ blockShift, blocks, tail, createdMs, counts, seed, meta }) => {
    const blockSize = 2 ** blockShift;
    // The last block may be partial.
    const imageBytes = blocks === 0 ? 0 : (blocks - 1) * blockSize + 1 + (tail % blockSize);
    return { blockSize, imageBytes, createdMs, changedBlocks: counts[0], zeroBlocks: counts[1], storedBytes: counts[2], meta, entries: entriesFor(blockCountFor(imageBytes, blockSize), seed) };
  });

export function headerOf(m: ManifestCase): Buffer {
  return encodeHeader({ ...m, blockCount: blockCountFor(m.imageBytes, m.blockSize) });
}

/** The stored manifest: header, entries, SHA-256 of both. */
export function manifestBytesOf(m: ManifestCase): Buffer {
  return withDigest(Buffer.concat([headerOf(m), m.entries]));
}

export function withDigest(body: Buffer): Buffer {
  return Buffer.concat([body, createHash('sha256').update(body).digest()]);
}

/** A small fixed parent, for replaying a corpus. */
export const manifestCaseExample: ManifestCase = {
  blockSize: 4096,
  imageBytes: 3 * 4096,
  createdMs: 1,
  changedBlocks: 3,
  zeroBlocks: 0,
  storedBytes: 0,
  meta: { diskId: 'vm/vda', versionId: '20261125T033504.123Z-bbbbbb', parentVersionId: null, source: { kind: 'image', format: 'raw' } },
  entries: entriesFor(3, 1),
};
