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
}

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
 * Given `ranges` (a changed-block-tracked scan), only those blocks are cut into segments; a
 * segment never spans two ranges.
 */
export class SegmentPlanner {
  private nextBlock = 0;
  private nextSeq = 0;
  private rangeIndex = 0;
  private readonly ranges: readonly BlockRange[];
  private dense: boolean;
  private readonly largeBlocks: number;
  private readonly smallBlocks: number;

  constructor(
    private readonly geometry: ScanGeometry,
    tuning: ScanTuning,
    hasParent: boolean,
    ranges?: readonly BlockRange[],
  ) {
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
