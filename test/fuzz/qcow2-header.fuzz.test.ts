import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeQcow2Header, qcow2HeaderAreaBytes, qcow2HeaderExtension } from '../../src/image/qcow2-header.js';
import { QCOW2_MAGIC } from '../../src/image/qcow2-limits.js';
import { encodeQcow2Header, l1EntriesFor, QCOW2_HEADER_BYTES } from '../../src/image/qcow2-writer-format.js';
import { checkProperty, mutated, replayCorpus, underContract, withMagic, type DecoderContract } from './fuzz-kit.js';

/**
 * The qcow2 header (qcow2-header.ts) of an image file someone else wrote: decoded, it gives the
 * fields it was written with, or the image is refused with IMAGE_CORRUPT or IMAGE_UNSUPPORTED —
 * whatever the sizes, offsets and extension lengths claim; qcow2HeaderAreaBytes() never asks
 * to read more than a 2 MiB cluster.
 */
const MODULE = 'qcow2-header';
const contract: DecoderContract = { codes: ['IMAGE_CORRUPT', 'IMAGE_UNSUPPORTED'], maxAllocBytes: 64 * 1024, maxMs: 1000 };
/** Header fields: version, backing name offset and size, cluster bits, size, crypt, L1, refcounts, snapshots, features, refcount order, header length, compression type, first extension. */
const FIELDS = [4, 8, 16, 20, 24, 32, 36, 40, 48, 56, 60, 64, 72, 80, 88, 96, 100, 104, 112, 116, 120];

interface HeaderCase {
  clusterBits: number;
  virtualSize: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  backingFile?: string;
  backingFormat?: string;
  /** What decodeQcow2Header is given: the first cluster, or the whole (shorter) file. */
  bytes: Buffer;
}

/** Headers as blockrep's qcow2 writer makes them, some with a backing file and its format. */
const headerCase: fc.Arbitrary<HeaderCase> = fc
  .record({
    clusterBits: fc.integer({ min: 9, max: 21 }),
    virtualSize: fc.oneof(fc.nat({ max: 2 ** 40 }), fc.constantFrom(0, 1, 2 ** 50)),
    l1Cluster: fc.integer({ min: 3, max: 1000 }),
    refcountTableClusters: fc.integer({ min: 1, max: 16 }),
    backing: fc.option(fc.record({ name: fc.string({ minLength: 1, maxLength: 60 }).filter((s) => !s.includes('\0')), format: fc.constantFrom('raw', 'qcow2') }), { nil: undefined }),
  })
  // The writer's limit, and QEMU's: an L1 table of at most 32 MiB.
  .filter(({ clusterBits, virtualSize }) => l1EntriesFor(virtualSize, 2 ** clusterBits) <= (32 * 1024 * 1024) / 8)
  .map(({ clusterBits, virtualSize, l1Cluster, refcountTableClusters, backing }) => {
    const clusterSize = 2 ** clusterBits;
    const fields = { clusterBits, virtualSize, l1Size: l1EntriesFor(virtualSize, clusterSize), l1TableOffset: l1Cluster * clusterSize, refcountTableOffset: clusterSize, refcountTableClusters };
    const bytes = Buffer.alloc(Math.min(clusterSize, 2048));
    encodeQcow2Header(fields, bytes);
    if (backing) {
      // The backing format extension, the end marker, then the name after them.
      const name = Buffer.from(backing.name, 'utf8');
      let off = QCOW2_HEADER_BYTES;
      bytes.writeUInt32BE(qcow2HeaderExtension.backingFormat, off);
      bytes.writeUInt32BE(backing.format.length, off + 4);
      bytes.write(backing.format, off + 8);
      off += 8 + 8;
      off += 8; // end of extensions: type 0, length 0
      bytes.writeBigUInt64BE(BigInt(off), 8);
      bytes.writeUInt32BE(name.length, 16);
      name.copy(bytes, off);
    }
    return { ...fields, ...(backing ? { backingFile: backing.name, backingFormat: backing.format } : {}), bytes };
  });

describe('qcow2 header under arbitrary bytes', () => {
  it('replays its corpus within the contract', async () => {
    await replayCorpus(MODULE, async (bytes) => {
      await underContract(contract, () => decodeQcow2Header(bytes, 'corpus.qcow2'));
      expect(qcow2HeaderAreaBytes(bytes)).toBeLessThanOrEqual(2 * 1024 * 1024);
    });
  });

  it('round-trips: a header decodes to the fields it was written with', async () => {
    await checkProperty(MODULE, headerCase, (h) => {
      const header = decodeQcow2Header(h.bytes, 'fuzz.qcow2');
      expect(header).toMatchObject({
        version: 3,
        clusterBits: h.clusterBits,
        clusterSize: 2 ** h.clusterBits,
        virtualSize: h.virtualSize,
        l1TableOffset: h.l1TableOffset,
        refcountTableOffset: h.refcountTableOffset,
        refcountTableClusters: h.refcountTableClusters,
        compressionType: 'zlib',
        extendedL2: false,
        backingFile: h.backingFile,
        backingFormat: h.backingFormat,
      });
      expect(header.l1EntriesUsed).toBeLessThanOrEqual(header.l1Size);
      expect(qcow2HeaderAreaBytes(h.bytes)).toBe(2 ** h.clusterBits);
    }, 300);
  });

  it('mutated headers decode within their limits or are refused with a stable code', async () => {
    await checkProperty(MODULE, headerCase.chain((h) => mutated(fc.constant(h.bytes), FIELDS)), async (bytes) => {
      const out = await underContract(contract, () => decodeQcow2Header(bytes, 'fuzz.qcow2'));
      if (out.ok) {
        const h = out.value;
        // What a decoded header lets the reader allocate and seek is within QEMU's limits.
        expect(h.l1Size).toBeLessThanOrEqual((32 * 1024 * 1024) / 8);
        expect(h.l1EntriesUsed).toBeLessThanOrEqual(h.l1Size);
        expect(h.clusterBits).toBeGreaterThanOrEqual(9);
        expect(h.clusterBits).toBeLessThanOrEqual(21);
        expect(Number.isSafeInteger(h.virtualSize) && Number.isSafeInteger(h.l1TableOffset)).toBe(true);
        expect((h.backingFile?.length ?? 0) <= 1023).toBe(true);
      }
      expect(qcow2HeaderAreaBytes(bytes)).toBeLessThanOrEqual(2 * 1024 * 1024);
    }, 400);
  });

  it('arbitrary bytes behind the magic are refused with a stable code or decode within limits', async () => {
    const magic = Buffer.alloc(8);
    magic.writeUInt32BE(QCOW2_MAGIC, 0);
    magic.writeUInt32BE(3, 4);
    await checkProperty(MODULE, withMagic(magic, 1024), async (bytes) => {
      await underContract(contract, () => decodeQcow2Header(bytes, 'fuzz.qcow2'));
    }, 300);
  });
});
