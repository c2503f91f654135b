import type { ScanBatch } from './scan-batch.js';
import type { ScanGeometry } from './scan-geometry.js';
import type { ScanTuning } from './scan-tuning.js';

/** Consecutive blocks [start, start + count). */
export interface BlockRange {
  start: number;
  count: number;
}

export interface PlannedSegment {
  seq: number;
  startBlock: number;
  count: number;
  /** Ranges mode: 1 = a block between the ranges, not to be read. */
  skip?: Uint8Array;
}

/**
 * Ranges mode: the most blocks one segment may span, the ranges and the gaps between them.
 * Many small dirty ranges then cost a few segments (messages, manifest reads) instead of one
 * each; the gaps are not read, only walked over.
 */
const WINDOW_BLOCKS = 4096;

/**
 * Cuts the image into consecutive segments, sized by what the scan is finding. While few
 * blocks change (the nightly case) segments are large: fewer messages and wake-ups per GiB.
 * While changed blocks flow (a first backup, or a disk rewritten since the last run) they
 * are small, because a segment's encoded chunks are held in memory until the consumer takes
 * them: at most `segmentsPerWorker × workers` segments are in flight.
 *
 * A scan without parent starts small; with a parent it starts large and turns small as soon
 * as a segment comes back with chunks worth more than a small segment.
 *
 * Given `ranges` (a changed-block-tracked scan), only those blocks are read: a segment spans
 * one or more ranges (at most WINDOW_BLOCKS blocks in all, and no more blocks to read than a
 * segment of the full scan), the blocks between them marked `skip`.
 */
export class SegmentPlanner {
  private nextBlock = 0;
  private nextSeq = 0;
  private rangeIndex = 0;
  private readonly ranges: readonly BlockRange[];
  private readonly rangesMode: boolean;
  private dense: boolean;
  private readonly largeBlocks: number;
  private readonly smallBlocks: number;

  constructor(
    private readonly geometry: ScanGeometry,
    tuning: ScanTuning,
    hasParent: boolean,
    ranges?: readonly BlockRange[],
  ) {
    this.rangesMode = ranges !== undefined;
    this.ranges = ranges ?? (geometry.blockCount > 0 ? [{ start: 0, count: geometry.blockCount }] : []);
    this.nextBlock = this.ranges[0]?.start ?? 0;
    this.largeBlocks = blocksIn(tuning.segmentBytes, geometry.blockSize);
    this.smallBlocks = Math.min(this.largeBlocks, blocksIn(tuning.denseSegmentBytes, geometry.blockSize));
    this.dense = !hasParent;
  }

  get done(): boolean {
    return this.rangeIndex >= this.ranges.length;
  }

  next(): PlannedSegment {
    if (this.rangesMode) return this.nextOfRanges();
    const range = this.ranges[this.rangeIndex]!;
    const end = range.start + range.count;
    const count = Math.min(this.dense ? this.smallBlocks : this.largeBlocks, end - this.nextBlock);
    const segment = { seq: this.nextSeq++, startBlock: this.nextBlock, count };
    this.nextBlock += count;
    if (this.nextBlock >= end) {
      this.rangeIndex++;
      this.nextBlock = this.ranges[this.rangeIndex]?.start ?? end;
    }
    return segment;
  }

  private nextOfRanges(): PlannedSegment {
    const maxRead = this.dense ? this.smallBlocks : this.largeBlocks;
    const start = this.nextBlock;
    let end = start;
    let read = 0;
    const spans: Array<[number, number]> = [];
    while (this.rangeIndex < this.ranges.length && read < maxRead) {
      const r = this.ranges[this.rangeIndex]!;
      const from = Math.max(this.nextBlock, r.start);
      const take = Math.min(r.start + r.count - from, maxRead - read, start + WINDOW_BLOCKS - from);
      if (take <= 0) break;
      spans.push([from, from + take]);
      read += take;
      end = from + take;
      this.nextBlock = end;
      if (end >= r.start + r.count) {
        this.rangeIndex++;
        this.nextBlock = this.ranges[this.rangeIndex]?.start ?? end;
      }
    }
    const count = end - start;
    const segment: PlannedSegment = { seq: this.nextSeq++, startBlock: start, count };
    if (read < count) {
      const skip = new Uint8Array(count).fill(1);
      for (const [a, b] of spans) skip.fill(0, a - start, b - start);
      segment.skip = skip;
    }
    return segment;
  }

  /** Learns from a finished segment how many bytes of chunks a segment now produces. */
  observe(batch: ScanBatch): void {
    let chunkBytes = 0;
    for (const { chunk } of batch.chunks) chunkBytes += chunk.blob.byteLength;
    // Would a large segment at this density hold more than a small one's worth of chunks?
    const density = chunkBytes / (batch.count * this.geometry.blockSize);
    this.dense = density * this.largeBlocks > this.smallBlocks;
  }
}

function blocksIn(bytes: number, blockSize: number): number {
  return Math.max(1, Math.floor(bytes / blockSize));
}
