import xxhash from 'xxhash-wasm';
import { describe, expect, it } from 'vitest';
import { decodeChunk } from '../../src/chunk/chunk-codec.js';
import type { SegmentResult, SegmentTask } from '../../src/scan/scan-batch.js';
import { ScanGeometry } from '../../src/scan/scan-geometry.js';
import { arenaBytesFor, SegmentScanner, zeroBlocks } from '../../src/scan/segment-scanner.js';
import { Xxh64Wasm } from '../../src/scan/xxh64-wasm.js';
import { zeroBlockHash } from '../../src/scan/zero-block-hash.js';
import { MemoryReader, regionBytes, type Region } from './scan-fixtures.js';

const KiB = 1024;
const blockSize = 64 * KiB;

// 23 full blocks and a short one: random, written zeros, a known-zero extent, text.
const regions: Region[] = [
  { kind: 'random', bytes: 5 * blockSize, seed: 1 },
  { kind: 'zeros', bytes: 3 * blockSize },
  { kind: 'random', bytes: 2 * blockSize + 4 * KiB, seed: 2 },
  { kind: 'hole', bytes: 6 * blockSize + 60 * KiB }, // reported as a zero extent; block-aligned at both ends
  { kind: 'text', bytes: 6 * blockSize + 512 },
];
const image = Buffer.concat(regions.map(regionBytes));
const holeStart = (5 + 3 + 2) * blockSize + 4 * KiB;
const holeLength = 6 * blockSize + 60 * KiB;

async function scan(options: {
  reader: MemoryReader;
  segmentBlocks: number;
  unitBytes?: number;
  readAhead?: number;
  parent?: BigUint64Array;
  compress?: boolean;
}): Promise<SegmentResult[]> {
  const geometry = new ScanGeometry(options.reader.virtualSize, blockSize);
  const unitBytes = options.unitBytes ?? 4 * blockSize;
  const readAhead = options.readAhead ?? 1;
  const scanner = new SegmentScanner({
    reader: options.reader,
    geometry,
    hasher: await Xxh64Wasm.create(arenaBytesFor(geometry, unitBytes, readAhead)),
    unitBytes,
    readAhead,
    zeroHash: await zeroBlockHash(blockSize),
    lastZeroHash: await zeroBlockHash(geometry.lastBlockLength),
    compress: options.compress ?? true,
  });
  async function* tasks(): AsyncGenerator<SegmentTask> {
    for (let seq = 0, start = 0; start < geometry.blockCount; seq++, start += options.segmentBlocks) {
      const count = Math.min(options.segmentBlocks, geometry.blockCount - start);
      yield { seq, startBlock: start, count, parent: options.parent?.slice(start, start + count) };
    }
  }
  const out: SegmentResult[] = [];
  for await (const result of scanner.run(tasks())) out.push(result);
  return out;
}

function joined(results: SegmentResult[]) {
  const hashes = results.flatMap((r) => [...r.hashes]);
  const zero = results.flatMap((r) => [...r.zero]);
  const changed = results.flatMap((r) => [...r.changed]);
  const chunks = results.flatMap((r) => r.chunks);
  return { hashes, zero, changed, chunks, bytesRead: results.reduce((n, r) => n + r.bytesRead, 0) };
}

async function expectedHashes(): Promise<bigint[]> {
  const api = await xxhash();
  const out: bigint[] = [];
  for (let at = 0; at < image.length; at += blockSize) out.push(api.h64Raw(image.subarray(at, at + blockSize)));
  return out;
}

describe('SegmentScanner', () => {
  it('hashes every block like xxhash-wasm on the bytes, the short last block over its length', async () => {
    const expected = await expectedHashes();
    expect(expected).toHaveLength(24);
    for (const [segmentBlocks, unitBytes, readAhead] of [[5, 4 * blockSize, 1], [24, blockSize, 2], [1, 8 * blockSize, 3], [7, 3 * blockSize, 1]] as const) {
      const reader = new MemoryReader(image, [{ offset: holeStart, length: holeLength }]);
      const results = await scan({ reader, segmentBlocks, unitBytes, readAhead });
      expect(joined(results).hashes, `segment ${segmentBlocks}, unit ${unitBytes}, read-ahead ${readAhead}`).toEqual(expected);
      // contiguous, ascending segments
      let next = 0;
      for (const r of results) {
        expect(r.startBlock).toBe(next);
        next += r.count;
      }
      expect(next).toBe(24);
      expect(reader.maxConcurrentReads).toBeLessThanOrEqual(readAhead);
    }
  });

  it('flags written zeros and zero extents as zero, and reads no block wholly inside a zero extent', async () => {
    const reader = new MemoryReader(image, [{ offset: holeStart, length: holeLength }]);
    const { zero, bytesRead } = joined(await scan({ reader, segmentBlocks: 4 }));
    const expectedZero = Array.from({ length: 24 }, (_, b) => (b >= 5 && b < 8) || (b >= 11 && b < 17) ? 1 : 0);
    expect(zero).toEqual(expectedZero);
    // Blocks 11..16 lie wholly in the extent; block 10 only partly, so it is read.
    expect(bytesRead).toBe(image.length - 6 * blockSize);
    expect(reader.bytesRead).toBe(bytesRead);
  });

  it('without a parent, marks every block changed and encodes exactly the non-zero ones', async () => {
    const reader = new MemoryReader(image, [{ offset: holeStart, length: holeLength }]);
    const { zero, changed, chunks } = joined(await scan({ reader, segmentBlocks: 5 }));
    expect(changed.every((c) => c === 1)).toBe(true);
    expect(chunks.map((c) => c.index)).toEqual(zero.flatMap((z, b) => (z ? [] : [b])));
    for (const { index, chunk } of chunks) {
      const bytes = image.subarray(index * blockSize, (index + 1) * blockSize);
      expect(chunk.rawLength).toBe(bytes.length);
      expect(decodeChunk(chunk.blob, chunk.id).equals(bytes)).toBe(true);
    }
    const last = chunks.at(-1)!;
    expect(last.index).toBe(23);
    expect(last.chunk.rawLength).toBe(512);
  });

  it('against a parent, marks and encodes only the blocks whose hash differs', async () => {
    const parent = BigUint64Array.from(await expectedHashes());
    parent[2] = 1n; // random block
    parent[6] = 2n; // written zeros: changed, but zero, so no chunk
    parent[12] = 3n; // zero extent
    parent[23] = 4n; // short last block
    const reader = new MemoryReader(image, [{ offset: holeStart, length: holeLength }]);
    const { changed, chunks } = joined(await scan({ reader, segmentBlocks: 3, parent, compress: false }));
    expect(changed.flatMap((c, b) => (c ? [b] : []))).toEqual([2, 6, 12, 23]);
    expect(chunks.map((c) => c.index)).toEqual([2, 23]);
    for (const { index, chunk } of chunks) {
      expect(decodeChunk(chunk.blob, chunk.id).equals(image.subarray(index * blockSize, (index + 1) * blockSize))).toBe(true);
    }
  });

  it('passes a reader’s error on, with its code', async () => {
    for (const readAhead of [1, 2, 3]) {
      const reader = new MemoryReader(image, [], 9 * blockSize + 5);
      await expect(scan({ reader, segmentBlocks: 4, readAhead })).rejects.toMatchObject({ code: 'IMAGE_CORRUPT' });
    }
  });

  it('reports a read error even while later loads wait for tasks that never come', async () => {
    // A worker's task queue stays open: loads beyond the last task wait on it.
    const reader = new MemoryReader(image, [], 2 * blockSize);
    const geometry = new ScanGeometry(reader.virtualSize, blockSize);
    const scanner = new SegmentScanner({
      reader,
      geometry,
      hasher: await Xxh64Wasm.create(arenaBytesFor(geometry, blockSize, 3)),
      unitBytes: blockSize,
      readAhead: 3,
      zeroHash: await zeroBlockHash(blockSize),
      lastZeroHash: await zeroBlockHash(geometry.lastBlockLength),
      compress: true,
    });
    async function* tasks(): AsyncGenerator<SegmentTask> {
      yield { seq: 0, startBlock: 0, count: 3, parent: undefined };
      await new Promise(() => undefined); // never another task, never the end
    }
    const run = (async () => {
      for await (const _ of scanner.run(tasks())) {
        // the first segment holds the bad block: nothing is yielded
      }
    })();
    await expect(run).rejects.toMatchObject({ code: 'IMAGE_CORRUPT' });
  });
});

describe('zeroBlocks', () => {
  const bs = 4096;
  it('marks only blocks wholly inside (merged) zero extents, and a short last block at the end', () => {
    const marks = zeroBlocks(
      [
        { offset: 0, length: 100, kind: 'data' },
        { offset: 100, length: 8092, kind: 'zero' }, // to 8192: covers block 1 only
        { offset: 8192, length: 2048, kind: 'zero' }, // merged with the next one: block 2
        { offset: 10240, length: 2048, kind: 'zero' },
        { offset: 12288, length: 4096, kind: 'data' },
        { offset: 16384, length: 4096 + 512, kind: 'zero' }, // block 4 and the short block 5
      ],
      0,
      16384 + 4096 + 512,
      bs,
      6,
    );
    expect([...marks]).toEqual([0, 1, 1, 0, 1, 1]);
  });

  it('works on a range that starts mid-image', () => {
    const marks = zeroBlocks([{ offset: 40960, length: 8192, kind: 'zero' }], 40960, 49152, bs, 2);
    expect([...marks]).toEqual([1, 1]);
  });
});
