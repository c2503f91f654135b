import { describe, expect, it } from 'vitest';
import type { EncodedChunk } from '../../src/chunk/chunk-codec.js';
import type { ScanBatch } from '../../src/scan/scan-batch.js';
import { ScanGeometry } from '../../src/scan/scan-geometry.js';
import { resolveScanTuning } from '../../src/scan/scan-tuning.js';
import { SegmentPlanner } from '../../src/scan/segment-planner.js';

const MiB = 1024 * 1024;
const geometry = new ScanGeometry(100 * MiB + 512, MiB);
const tuning = resolveScanTuning({ segmentBytes: 16 * MiB, denseSegmentBytes: 4 * MiB });

function batch(startBlock: number, count: number, chunkBlobBytes: number[]): ScanBatch {
  const chunk = (n: number): EncodedChunk => ({ id: 'x', blob: new Uint8Array(n), rawLength: MiB });
  return {
    startBlock,
    count,
    hashes: new BigUint64Array(count),
    zero: new Uint8Array(count),
    changed: new Uint8Array(count),
    chunks: chunkBlobBytes.map((n, i) => ({ index: startBlock + i, chunk: chunk(n) })),
    bytesRead: 0,
  };
}

describe('SegmentPlanner', () => {
  it('covers every block once, in order, ending with the short last block', () => {
    const planner = new SegmentPlanner(geometry, tuning, true);
    let next = 0;
    let seq = 0;
    while (!planner.done) {
      const s = planner.next();
      expect(s).toMatchObject({ seq: seq++, startBlock: next });
      next += s.count;
    }
    expect(next).toBe(geometry.blockCount);
    expect(geometry.blockCount).toBe(101);
  });

  it('starts small without a parent, large with one, and follows the density of chunks', () => {
    expect(new SegmentPlanner(geometry, tuning, false).next().count).toBe(4);
    const planner = new SegmentPlanner(geometry, tuning, true);
    const first = planner.next();
    expect(first.count).toBe(16);
    // 16 blocks, 8 of them changed and incompressible: a large segment would hold 8 MiB.
    planner.observe(batch(first.startBlock, first.count, Array(8).fill(MiB)));
    expect(planner.next().count).toBe(4);
    // 4 blocks with 1 compressible chunk: 1/16 density, 1 MiB per large segment.
    planner.observe(batch(16, 4, [64 * 1024 * 4]));
    expect(planner.next().count).toBe(16);
  });

  it('uses at least one block per segment when blocks are larger than segments', () => {
    const big = new ScanGeometry(64 * MiB, 16 * MiB);
    const planner = new SegmentPlanner(big, tuning, false);
    expect(planner.next().count).toBe(1);
  });

  it('ranges: reads exactly the blocks of the ranges, spanning small gaps in one segment and no more than a segment reads', () => {
    const big = new ScanGeometry(20000 * MiB, MiB);
    const ranges = [{ start: 3, count: 2 }, { start: 10, count: 1 }, { start: 12, count: 30 }, { start: 9000, count: 1 }, { start: 19990, count: 10 }];
    const planner = new SegmentPlanner(big, tuning, true, ranges);
    const read: number[] = [];
    const segments = [];
    while (!planner.done) {
      const s = planner.next();
      segments.push(s);
      let inSegment = 0;
      for (let b = 0; b < s.count; b++) {
        if (s.skip?.[b] === 1) continue;
        read.push(s.startBlock + b);
        inSegment++;
      }
      expect(inSegment).toBeLessThanOrEqual(16);
      expect(s.count).toBeLessThanOrEqual(4096);
      expect(s.skip === undefined || s.skip[0] === 0).toBe(true);
    }
    const expected = ranges.flatMap((r) => Array.from({ length: r.count }, (_, i) => r.start + i));
    expect(read).toEqual(expected);
    // The first segment spans the first ranges and the gaps between them.
    expect(segments[0]).toMatchObject({ startBlock: 3 });
    expect(segments[0]!.count).toBeGreaterThan(8);
    expect(segments.length).toBeLessThan(8);
  });
});
