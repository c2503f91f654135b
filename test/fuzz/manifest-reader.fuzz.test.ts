import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MemoryBackend } from '../../src/backend/memory/memory-backend.js';
import { decodeHeader, DIGEST_BYTES, encodeHeader, ENTRY_BYTES, MANIFEST_MAGIC } from '../../src/manifest/manifest-format.js';
import { ManifestReader } from '../../src/manifest/manifest-reader.js';
import { checkProperty, mutated, replayCorpus, underContract, withMagic, type DecoderContract, type Outcome } from './fuzz-kit.js';
import { manifestBytesOf, manifestCase, manifestMeta, withDigest } from './manifest-arbitraries.js';

/**
 * Manifests (manifest-format.ts, manifest-reader.ts) as read back from storage: open() and the
 * entries it then reads either give the manifest that was written, or fail with REPO_CORRUPT
 * or REPO_FORMAT — also when the damage comes with a matching digest (a hostile writer, or a
 * bug that wrote a bad manifest), so the checks behind the digest are exercised too.
 */
const MODULE = 'manifest-reader';
const contract: DecoderContract = { codes: ['REPO_CORRUPT', 'REPO_FORMAT'], maxAllocBytes: 16 * 1024 * 1024 };
/** The largest block a backup makes: restore allocates a block of zeros this large. */
const MAX_BLOCK_BYTES = 16 * 1024 * 1024;
const KEY = 'disks/fuzz/20261126T033504.123Z-aaaaaa.manifest';
/** Header fields: magic, version, hash algorithm, header bytes, block size, sizes and counts, meta length. */
const FIELDS = [0, 4, 6, 8, 12, 16, 24, 32, 40, 48, 56, 64, 68];

/** Opens the manifest in `bytes` and reads all its entries, as gc and restore do. */
async function readAll(bytes: Buffer): Promise<{ reader: ManifestReader; entries: Buffer }> {
  const backend = new MemoryBackend();
  await backend.write(KEY, bytes);
  const reader = await ManifestReader.open(backend, KEY);
  const parts: Buffer[] = [];
  for await (const batch of reader.batches(64)) parts.push(await reader.rawEntries(batch.startBlock, batch.hashes.length));
  return { reader, entries: Buffer.concat(parts) };
}

/** What an accepted manifest claims stays within what a backup makes and what was stored. */
function expectWithinLimits(out: Outcome<{ reader: ManifestReader }>, bytes: Buffer): void {
  if (!out.ok) return;
  const { header } = out.value.reader;
  expect(header.blockSize).toBeLessThanOrEqual(MAX_BLOCK_BYTES);
  expect(header.blockCount * ENTRY_BYTES).toBeLessThan(bytes.length);
}

describe('manifest reader under arbitrary bytes', () => {
  it('replays its corpus within the contract', async () => {
    await replayCorpus(MODULE, async (bytes) => {
      expectWithinLimits(await underContract(contract, () => readAll(bytes)), bytes);
      await underContract(contract, () => decodeHeader(bytes, 'corpus'));
    });
  });

  it('round-trips: the header and every entry read back as written', async () => {
    await checkProperty(MODULE, manifestCase, async (m) => {
      const { reader, entries } = await readAll(manifestBytesOf(m));
      expect(reader.header).toMatchObject({ blockSize: m.blockSize, imageBytes: m.imageBytes, createdMs: m.createdMs, changedBlocks: m.changedBlocks, zeroBlocks: m.zeroBlocks, storedBytes: m.storedBytes, meta: m.meta });
      expect(entries.equals(m.entries)).toBe(true);
      const some = await reader.entries(0, 3);
      for (let i = 0; i < some.hashes.length; i++) expect(some.hashes[i]).toBe(m.entries.readBigUInt64BE(i * ENTRY_BYTES));
    }, 100);
  });

  it('damaged manifests, with their digest stale or made to match, fail with a stable code within bounds', async () => {
    const cases = fc.tuple(manifestCase.chain((m) => mutated(fc.constant(manifestBytesOf(m).subarray(0, -DIGEST_BYTES)), FIELDS)), fc.boolean()).map(([body, redigest]) => (redigest ? withDigest(body) : body));
    await checkProperty(MODULE, cases, async (bytes) => {
      expectWithinLimits(await underContract(contract, () => readAll(bytes)), bytes);
    }, 300);
  });

  it('headers whose fields claim anything, with entries and digest to match, are refused or stay within limits', async () => {
    // Well-formed manifests (a hostile or buggy writer computes the digest too) whose header
    // fields are drawn from their whole range, entries and all: the checks behind the digest.
    const claims = fc
      .record({
        blockSize: fc.oneof(fc.integer({ min: 0, max: 31 }).map((k) => 2 ** k), fc.nat({ max: 2 ** 32 - 1 })),
        blocks: fc.integer({ min: 0, max: 3 }),
        tail: fc.nat(),
        createdMs: fc.oneof(fc.nat(), fc.constant(Number.MAX_SAFE_INTEGER)),
        meta: manifestMeta,
      })
      .map(({ blockSize, blocks, tail, createdMs, meta }) => {
        const imageBytes = blocks === 0 || blockSize === 0 ? 0 : (blocks - 1) * blockSize + 1 + (tail % blockSize);
        const blockCount = blockSize === 0 ? 0 : Math.ceil(imageBytes / blockSize);
        const header = encodeHeader({ blockSize, imageBytes, blockCount, createdMs, changedBlocks: 0, zeroBlocks: 0, storedBytes: 0, meta });
        return withDigest(Buffer.concat([header, Buffer.alloc(blockCount * ENTRY_BYTES)]));
      });
    await checkProperty(MODULE, claims, async (bytes) => {
      expectWithinLimits(await underContract(contract, () => readAll(bytes)), bytes);
    }, 300);
  });

  it('arbitrary headers behind the magic and version fail with a stable code within bounds', async () => {
    const magic = Buffer.alloc(6);
    magic.writeUInt32BE(MANIFEST_MAGIC, 0);
    magic.writeUInt16BE(1, 4);
    await checkProperty(MODULE, withMagic(magic, 400), async (bytes) => {
      await underContract(contract, () => decodeHeader(bytes, 'fuzz'));
      await underContract(contract, () => readAll(withDigest(bytes)));
    }, 300);
  });
});
