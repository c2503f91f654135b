import type { EncodedChunk } from '../chunk/index.js';

/**
 * The scan result for a run of consecutive blocks. A scan yields batches in ascending,
 * contiguous block order. `hashes`, `zero` and `changed` are indexed from `startBlock`
 * (element i is block startBlock + i); a chunk's `index` is absolute.
 */
export interface ScanBatch {
  startBlock: number;
  count: number;
  /** xxh64 (seed 0) of each block's bytes; a short last block is hashed over its real length. */
  hashes: BigUint64Array;
  /** 1 = the block reads as all zeros. */
  zero: Uint8Array;
  /** 1 = there is no parent, or the block's hash differs from the parent's. */
  changed: Uint8Array;
  /** Encoded content of every changed, non-zero block; `index` is the block's number in the image. */
  chunks: Array<{ index: number; chunk: EncodedChunk }>;
  /** Bytes actually read from the image for this batch (zero extents are not read). */
  bytesRead: number;
}

/** One segment of work: the blocks to scan and the parent's hashes for them, if any. */
export interface SegmentTask {
  seq: number;
  startBlock: number;
  count: number;
  /** Exactly `count` hashes in a buffer of their own: it is transferred to the worker. */
  parent: BigUint64Array | undefined;
  /**
   * A tracked scan: 1 = a block not to read (clean: it keeps the parent's hash, unchanged).
   * Requires `parent`. Lets one segment span many small dirty ranges and the gaps between.
   */
  skip?: Uint8Array | undefined;
}

/** A scanned segment; `seq` lets the main thread put results from several workers in order. */
export interface SegmentResult extends ScanBatch {
  seq: number;
}
