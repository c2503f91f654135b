/**
 * Internal knobs of the scan, with the defaults chosen by bench/scan-bench.mjs (see
 * bench/results/scan.md). Not part of the CLI: they trade memory for throughput.
 */
export interface ScanTuning {
  /**
   * Blocks handed to a worker at a time (and yielded as one batch) while few blocks change:
   * large segments mean fewer messages and thread wake-ups. Rounded to whole blocks.
   */
  segmentBytes: number;
  /**
   * Segment size while changed blocks flow (no parent, or many changes): each segment's
   * encoded chunks are held until the consumer takes them, so this bounds that memory.
   */
  denseSegmentBytes: number;
  /** Size of one read (rounded down to whole blocks, at least one block). */
  unitBytes: number;
  /** Reads each scanner keeps in flight while it hashes. */
  readAhead: number;
  /**
   * Workers read with blocking pread (no thread-pool hop per read; a worker thread has nothing
   * else to do meanwhile). The main thread's reads stay asynchronous.
   */
  syncReads: boolean;
  /** Segments queued on each worker, so it can read ahead across segment boundaries. */
  segmentsPerWorker: number;
  /** Scan on the main thread until the first worker is ready (tests turn it off to make
   * sure the workers do the work). */
  scanWhileWorkersStart: boolean;
  /** Worker script; tests point it at a misbehaving worker. */
  workerUrl?: URL;
}

const MiB = 1024 * 1024;

export const defaultScanTuning: ScanTuning = {
  segmentBytes: 16 * MiB,
  denseSegmentBytes: 4 * MiB,
  unitBytes: 4 * MiB,
  readAhead: 1,
  syncReads: false,
  segmentsPerWorker: 2,
  scanWhileWorkersStart: true,
};

export function resolveScanTuning(overrides: Partial<ScanTuning> | undefined): ScanTuning {
  return { ...defaultScanTuning, ...overrides };
}
