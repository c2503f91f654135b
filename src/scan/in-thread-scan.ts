import type { RepositoryKeys } from '../crypto/index.js';
import type { ImageReader } from '../image/index.js';
import type { ScanBatch, SegmentTask } from './scan-batch.js';
import type { ScanGeometry } from './scan-geometry.js';
import type { ScanTuning } from './scan-tuning.js';
import type { PlannedSegment, SegmentPlanner } from './segment-planner.js';
import { arenaBytesFor, SegmentScanner } from './segment-scanner.js';
import { Xxh64Wasm } from './xxh64-wasm.js';

export interface InThreadScanOptions {
  reader: ImageReader;
  geometry: ScanGeometry;
  compress: boolean;
  /** An encrypted repository's keys: chunks are then named by keyed hash and sealed. */
  keys: RepositoryKeys | undefined;
  zeroHash: bigint;
  lastZeroHash: bigint;
  planner: SegmentPlanner;
  parentTask: (segment: PlannedSegment) => Promise<SegmentTask>;
  signal: AbortSignal | undefined;
  tuning: ScanTuning;
}

/**
 * The scan on the calling thread (`workers: 0`): the same SegmentScanner as a worker runs,
 * fed directly. Meant for small images and for callers that must not start threads; reading
 * still overlaps hashing, but hashing and encoding get one core.
 */
export async function* inThreadScan(o: InThreadScanOptions): AsyncGenerator<ScanBatch> {
  const { geometry, tuning } = o;
  const hasher = await Xxh64Wasm.create(arenaBytesFor(geometry, tuning.unitBytes, tuning.readAhead));
  const scanner = new SegmentScanner({
    reader: o.reader,
    geometry,
    hasher,
    unitBytes: tuning.unitBytes,
    readAhead: tuning.readAhead,
    zeroHash: o.zeroHash,
    lastZeroHash: o.lastZeroHash,
    compress: o.compress,
    keys: o.keys,
    signal: o.signal,
  });
  const { planner } = o;
  async function* tasks(): AsyncGenerator<SegmentTask> {
    while (!planner.done) {
      yield await o.parentTask(planner.next());
    }
  }
  for await (const { seq: _seq, ...batch } of scanner.run(tasks())) {
    o.signal?.throwIfAborted();
    planner.observe(batch);
    yield batch;
  }
}
