import { availableParallelism } from 'node:os';
import type { RepositoryKeys } from '../crypto/index.js';
import { type ImageSpec, openImage } from '../image/index.js';
import { BlockrepError } from '../shared/index.js';
import { inThreadScan } from './in-thread-scan.js';
import { LocalSegmentScanner } from './local-segment-scanner.js';
import type { ScanBatch, SegmentTask } from './scan-batch.js';
import { ScanGeometry } from './scan-geometry.js';
import { resolveScanTuning, type ScanTuning } from './scan-tuning.js';
import { SegmentPlanner, type BlockRange, type PlannedSegment } from './segment-planner.js';
import { workerPoolScan } from './worker-pool-scan.js';
import { zeroBlockHash } from './zero-block-hash.js';

export type { ScanBatch } from './scan-batch.js';
export type { BlockRange } from './segment-planner.js';
export { zeroBlockHash } from './zero-block-hash.js';

export interface ScanOptions {
  image: ImageSpec;
  /** Bytes; a power of two from 4 KiB to 16 MiB. */
  blockSize: number;
  /** Worker threads; default min(2, availableParallelism()). 0 scans on the calling thread. */
  workers?: number;
  /**
   * The parent version's xxh64 of each block in [startBlock, startBlock + count); omitted
   * when there is no parent (every block is then changed). Called once per batch, in block
   * order, a few batches ahead of the one being yielded. The scan copies what it needs and
   * never keeps or modifies the returned array (it may be a view of a larger one).
   */
  parentHashes?: (startBlock: number, count: number) => Promise<BigUint64Array>;
  /** Passed to encodeChunk; default true. */
  compress?: boolean;
  /** An encrypted repository's keys (Repository.chunkKeys()): chunks are named by keyed hash and sealed where they are encoded, in the workers. */
  keys?: RepositoryKeys | undefined;
  /** Aborting stops the scan and its workers; the iteration throws `signal.reason`. */
  signal?: AbortSignal;
  /**
   * Only these blocks (ascending, not overlapping, inside the image): a changed-block-tracked
   * scan. Batches then cover exactly these ranges, in order; the blocks between are not read.
   * Omitted: every block.
   */
  blocks?: readonly BlockRange[];
}

const MAX_WORKERS = 64;

/**
 * Scans an image: reads it in blocks (zero extents are not read), hashes each block with
 * xxh64, compares with the parent, and encodes every changed non-zero block as a chunk.
 * Yields batches in ascending, contiguous block order; pulling drives the scan, so memory
 * stays bounded by the batches in flight. Breaking out of the loop stops the workers.
 *
 * Errors are BlockrepErrors with the code of their cause (a reader's IMAGE_CORRUPT in a
 * worker arrives here as IMAGE_CORRUPT), except an abort, which throws `signal.reason`.
 */
export function scanImage(opts: ScanOptions): AsyncIterable<ScanBatch> {
  return scanImageTuned(opts);
}

/** scanImage with internal knobs exposed, for the benchmark and the tests. */
export async function* scanImageTuned(opts: ScanOptions, overrides?: Partial<ScanTuning>): AsyncGenerator<ScanBatch> {
  const tuning = resolveScanTuning(overrides);
  const workers = opts.workers ?? Math.min(2, availableParallelism());
  if (!Number.isSafeInteger(workers) || workers < 0 || workers > MAX_WORKERS) {
    throw new BlockrepError('USAGE', `workers must be an integer from 0 to ${MAX_WORKERS}, not ${workers}`);
  }
  opts.signal?.throwIfAborted();
  // The main thread opens the image itself: to learn its size, to fail early and plainly
  // (IMAGE_NOT_FOUND...) before any thread starts, and to scan while the workers start.
  const reader = await openImage(opts.image);
  let readerOpen = true;
  const closeReader = async (): Promise<void> => {
    if (readerOpen) {
      readerOpen = false;
      await reader.close();
    }
  };
  try {
    const geometry = new ScanGeometry(reader.virtualSize, opts.blockSize);
    if (opts.blocks) checkRanges(opts.blocks, geometry.blockCount);
    if (geometry.blockCount === 0 || opts.blocks?.length === 0) return;
    const [zeroHash, lastZeroHash] = await Promise.all([
      zeroBlockHash(geometry.blockSize),
      zeroBlockHash(geometry.lastBlockLength),
    ]);
    const parentTask = async ({ seq, startBlock, count, skip }: PlannedSegment): Promise<SegmentTask> => {
      if (opts.parentHashes === undefined) {
        if (skip) throw new BlockrepError('INTERNAL', 'a tracked scan needs the parent hashes');
        return { seq, startBlock, count, parent: undefined };
      }
      const parent = await opts.parentHashes(startBlock, count);
      if (!(parent instanceof BigUint64Array) || parent.length !== count) {
        throw new BlockrepError('INTERNAL', `parentHashes(${startBlock}, ${count}) returned ${describe(parent)}, not ${count} hashes`);
      }
      // A copy of just this range: a view would drag its whole buffer through the structured
      // clone to the worker (a large image's entire parent manifest, for every segment).
      return { seq, startBlock, count, parent: parent.slice(), ...(skip ? { skip } : {}) };
    };
    const common = {
      geometry,
      compress: opts.compress !== false,
      keys: opts.keys,
      zeroHash,
      lastZeroHash,
      planner: new SegmentPlanner(geometry, tuning, opts.parentHashes !== undefined, opts.blocks),
      parentTask,
      signal: opts.signal,
      tuning,
    };
    if (workers === 0) {
      yield* inThreadScan({ ...common, reader });
    } else {
      // Each worker opens its own reader; this one scans while they start, then is closed.
      let local: LocalSegmentScanner | undefined;
      if (tuning.scanWhileWorkersStart) {
        readerOpen = false;
        local = new LocalSegmentScanner({ ...common, reader });
      } else {
        await closeReader();
      }
      yield* workerPoolScan({ ...common, image: opts.image, workers, local });
    }
  } finally {
    await closeReader();
  }
}

function checkRanges(ranges: readonly BlockRange[], blockCount: number): void {
  let end = 0;
  for (const r of ranges) {
    if (!Number.isSafeInteger(r.start) || !Number.isSafeInteger(r.count) || r.count <= 0 || r.start < end || r.start + r.count > blockCount) {
      throw new BlockrepError('INTERNAL', `scan ranges must be ascending, non-empty, not overlapping and inside the ${blockCount} blocks of the image; got [${r.start}, +${r.count}) after block ${end}`);
    }
    end = r.start + r.count;
  }
}

function describe(value: unknown): string {
  if (ArrayBuffer.isView(value)) return `${value.constructor.name}(${(value as BigUint64Array).length})`;
  return typeof value;
}
