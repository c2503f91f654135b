import type { RepositoryKeys } from '../crypto/index.js';
import type { ImageReader } from '../image/index.js';
import type { SegmentResult, SegmentTask } from './scan-batch.js';
import type { ScanGeometry } from './scan-geometry.js';
import type { ScanTuning } from './scan-tuning.js';
import { arenaBytesFor, SegmentScanner } from './segment-scanner.js';
import { Xxh64Wasm } from './xxh64-wasm.js';

export interface LocalSegmentScannerOptions {
  reader: ImageReader;
  geometry: ScanGeometry;
  compress: boolean;
  /** An encrypted repository's keys: chunks are then named by keyed hash and sealed. */
  keys: RepositoryKeys | undefined;
  zeroHash: bigint;
  lastZeroHash: bigint;
  signal: AbortSignal | undefined;
  tuning: ScanTuning;
}

/**
 * Scans single segments on the main thread, one call at a time. The worker pool uses it while
 * its workers start (starting a Node worker and loading its modules takes 100–250 ms, during
 * which the main thread would otherwise only wait), then closes it.
 */
export class LocalSegmentScanner {
  private scanner: SegmentScanner | undefined;

  constructor(private readonly o: LocalSegmentScannerOptions) {}

  async scan(task: SegmentTask): Promise<SegmentResult> {
    this.scanner ??= new SegmentScanner({
      reader: this.o.reader,
      geometry: this.o.geometry,
      hasher: await Xxh64Wasm.create(arenaBytesFor(this.o.geometry, this.o.tuning.unitBytes, this.o.tuning.readAhead)),
      unitBytes: this.o.tuning.unitBytes,
      readAhead: this.o.tuning.readAhead,
      zeroHash: this.o.zeroHash,
      lastZeroHash: this.o.lastZeroHash,
      compress: this.o.compress,
      keys: this.o.keys,
      signal: this.o.signal,
    });
    for await (const result of this.scanner.run([task])) return result;
    throw new Error(`segment ${task.seq} produced no result`); // run() yields once per task
  }

  async close(): Promise<void> {
    this.scanner = undefined;
    await this.o.reader.close();
  }
}
