import type { ScanBatch } from './scan-batch.js';
import type { ScanGeometry } from './scan-geometry.js';
import type { ScanTuning } from './scan-tuning.js';

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
 */
export class SegmentPlanner {
  private nextBlock = 0;
  private nextSeq = 0;
  private dense: boolean;
  private readonly largeBlocks: number;
  private readonly smallBlocks: number;

  constructor(
    private readonly geometry: ScanGeometry,
    tuning: ScanTuning,
    hasParent: boolean,
  ) {
    this.largeBlocks = blocksIn(tuning.segmentBytes, geometry.blockSize);
    this.smallBlocks = Math.min(this.largeBlocks, blocksIn(tuning.denseSegmentBytes, geometry.blockSize));
    this.dense = !hasParent;
  }

  get done(): boolean {
    return this.nextBlock >= this.geometry.blockCount;
  }

  next(): PlannedSegment {
    const count = Math.min(this.dense ? this.smallBlocks : this.largeBlocks, this.geometry.blockCount - this.nextBlock);
    const segment = { seq: this.nextSeq++, startBlock: this.nextBlock, count };
    this.nextBlock += count;
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
