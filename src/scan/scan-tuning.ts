/**
 * Internal knobs of the scan, with the defaults chosen by bench/scan-bench.mjs (see
 * bench/results/scan.md). Not part of the CLI: they trade memory for throughput, and the
 * defaults keep a whole scan under ~200 MiB of RSS whatever the image size.
 */
export interface ScanTuning {
  /** Blocks handed to a worker at a time, and yielded as one batch (rounded to whole blocks). */
  segmentBytes: number;
  /** Size of one read (rounded down to whole blocks, at least one block). */
  unitBytes: number;
  /** Reads each scanner keeps in flight while it hashes. */
  readAhead: number;
  /** Segments queued on each worker, so it can read ahead across segment boundaries. */
  segmentsPerWorker: number;
  /** Worker script; tests point it at a misbehaving worker. */
  workerUrl?: URL;
}

export const defaultScanTuning: ScanTuning = {
  segmentBytes: 8 * 1024 * 1024,
  unitBytes: 1024 * 1024,
  readAhead: 1,
  segmentsPerWorker: 2,
};

export function resolveScanTuning(overrides: Partial<ScanTuning> | undefined): ScanTuning {
  return { ...defaultScanTuning, ...overrides };
}

/** Blocks per segment: segmentBytes rounded down to whole blocks, at least one. */
export function segmentBlocks(tuning: ScanTuning, blockSize: number): number {
  return Math.max(1, Math.floor(tuning.segmentBytes / blockSize));
}
