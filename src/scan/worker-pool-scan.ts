import type { RepositoryKeys } from '../crypto/index.js';
import { Worker } from 'node:worker_threads';
import type { ImageSpec } from '../image/index.js';
import { BlockrepError, errorCodes, type ErrorCode } from '../shared/index.js';
import type { ScanBatch, SegmentResult, SegmentTask } from './scan-batch.js';
import type { ScanGeometry } from './scan-geometry.js';
import type { LocalSegmentScanner } from './local-segment-scanner.js';
import type { FromScanWorker, ScanWorkerInit, ToScanWorker } from './scan-protocol.js';
import type { ScanTuning } from './scan-tuning.js';
import type { PlannedSegment, SegmentPlanner } from './segment-planner.js';
import { scanWorkerUrl } from './worker-url.js';

export interface WorkerPoolScanOptions {
  image: ImageSpec;
  geometry: ScanGeometry;
  workers: number;
  compress: boolean;
  /** An encrypted repository's keys: chunks are then named by keyed hash and sealed. */
  keys: RepositoryKeys | undefined;
  zeroHash: bigint;
  lastZeroHash: bigint;
  planner: SegmentPlanner;
  parentTask: (segment: PlannedSegment) => Promise<SegmentTask>;
  /** Scans segments on the main thread until the first worker is ready; closed after. */
  local: LocalSegmentScanner | undefined;
  signal: AbortSignal | undefined;
  tuning: ScanTuning;
}

interface WorkerState {
  worker: Worker;
  ready: boolean;
  closed: boolean;
  exited: boolean;
  /** Segments sent and not yet returned. */
  assigned: number;
}

/** How long a worker may take to close its reader and exit before it is terminated. */
const CLOSE_GRACE_MS = 2000;

/**
 * A worker allocates little on the JavaScript heap (its data lives in WebAssembly memory and
 * in Buffers), so a small young generation costs nothing in speed and saves ~9 MiB of RSS
 * per worker against the default.
 */
const WORKER_YOUNG_GENERATION_MB = 2;

/**
 * Runs the scan on worker threads. The main thread only schedules: it hands out segments in
 * order (each with the parent's hashes for it), at most `segmentsPerWorker` queued per worker
 * and at most `workers * segmentsPerWorker` segments between dispatch and the consumer, and
 * yields results in block order. Because the consumer pulls, a slow consumer stops dispatch:
 * memory stays bounded by the segments in flight, whatever the image size.
 *
 * Starting the workers takes a while (100–250 ms); until the first is ready, the main thread
 * scans segments itself with `local`, so that time is not lost.
 *
 * Any failure (a worker's error, a worker that dies, the parent hashes, an abort) stops the
 * scan: every worker is asked to close its reader and, failing that, terminated.
 */
export async function* workerPoolScan(o: WorkerPoolScanOptions): AsyncGenerator<ScanBatch> {
  const { geometry, tuning, signal, planner } = o;
  let local = o.local;
  const maxInFlight = o.workers * tuning.segmentsPerWorker;
  const results = new Map<number, SegmentResult>();
  const states: WorkerState[] = [];
  let failure: unknown;
  let stopping = false;
  let wake: (() => void) | undefined;

  const notify = (): void => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const fail = (err: unknown): void => {
    failure ??= err;
    notify();
  };
  const nextEvent = (): Promise<void> => new Promise<void>((resolve) => (wake = resolve));
  const onAbort = (): void => fail(signal?.reason);

  const init: ScanWorkerInit = {
    image: o.image,
    blockSize: geometry.blockSize,
    virtualSize: geometry.virtualSize,
    compress: o.compress,
    keys: o.keys,
    zeroHash: o.zeroHash,
    lastZeroHash: o.lastZeroHash,
    unitBytes: tuning.unitBytes,
    readAhead: tuning.readAhead,
    syncReads: tuning.syncReads,
  };

  try {
    signal?.throwIfAborted();
    signal?.addEventListener('abort', onAbort, { once: true });
    const url = tuning.workerUrl ?? scanWorkerUrl();
    for (let i = 0; i < o.workers; i++) {
      const state: WorkerState = {
        worker: new Worker(url, {
          workerData: init,
          name: `blockrep-scan-${i}`,
          resourceLimits: { maxYoungGenerationSizeMb: WORKER_YOUNG_GENERATION_MB },
        }),
        ready: false,
        closed: false,
        exited: false,
        assigned: 0,
      };
      states.push(state);
      state.worker.on('message', (message: FromScanWorker) => {
        switch (message.type) {
          case 'ready':
            state.ready = true;
            break;
          case 'result':
            state.assigned--;
            results.set(message.result.seq, message.result);
            break;
          case 'error':
            fail(new BlockrepError(knownCode(message.code), message.message, { details: message.details }));
            break;
          case 'closed':
            state.closed = true;
            break;
        }
        notify();
      });
      state.worker.on('error', (err: Error) => {
        fail(new BlockrepError('INTERNAL', `scan worker ${i} failed: ${err.message}`, { cause: err }));
      });
      state.worker.on('exit', (code: number) => {
        state.exited = true;
        if (!stopping && !state.closed) {
          fail(new BlockrepError('INTERNAL', `scan worker ${i} exited unexpectedly (exit code ${code})`));
        }
        notify();
      });
    }

    let nextSeq = 0;
    let nextYield = 0;
    while (!planner.done || nextYield < nextSeq) {
      if (failure !== undefined) throw failure;
      while (!planner.done && nextSeq - nextYield < maxInFlight) {
        const state = leastLoaded(states, tuning.segmentsPerWorker);
        if (state === undefined) break;
        const task = await o.parentTask(planner.next());
        if (failure !== undefined) throw failure;
        state.assigned++;
        const message: ToScanWorker = { type: 'segment', task };
        // The parent hashes are a private copy (see parentTask): hand the buffer over.
        state.worker.postMessage(message, task.parent ? [task.parent.buffer as ArrayBuffer] : []);
        nextSeq++;
      }
      const result = results.get(nextYield);
      if (result !== undefined) {
        results.delete(nextYield);
        nextYield++;
        const { seq: _seq, ...batch } = result;
        planner.observe(batch);
        yield batch;
        continue;
      }
      if (local !== undefined) {
        if (!states.some((s) => s.ready) && !planner.done && nextSeq - nextYield < maxInFlight) {
          // No worker has started yet: scan the next segment here meanwhile.
          const segment = planner.next();
          nextSeq++;
          results.set(segment.seq, await local.scan(await o.parentTask(segment)));
          continue;
        }
        const done = local;
        local = undefined;
        await done.close();
        continue;
      }
      await nextEvent();
    }
    if (failure !== undefined) throw failure;
  } finally {
    stopping = true;
    signal?.removeEventListener('abort', onAbort);
    results.clear();
    await Promise.all([...states.map((s) => closeWorker(s)), local?.close()]);
  }
}

/**
 * The ready worker with the fewest segments queued, below `limit`. Workers get work as soon as
 * each has started, so a slow start of one does not hold up the others or the block order.
 */
function leastLoaded(states: WorkerState[], limit: number): WorkerState | undefined {
  let best: WorkerState | undefined;
  for (const s of states) {
    if (s.ready && s.assigned < limit && (best === undefined || s.assigned < best.assigned)) best = s;
  }
  return best;
}

/** Asks a worker to close its reader and exit; terminates it if it has not within the grace. */
async function closeWorker(state: WorkerState): Promise<void> {
  if (state.exited) return;
  const exited = new Promise<void>((resolve) => state.worker.once('exit', () => resolve()));
  const message: ToScanWorker = { type: 'close' };
  try {
    state.worker.postMessage(message);
  } catch {
    // already gone
  }
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), CLOSE_GRACE_MS)));
  const late = await Promise.race([exited.then(() => false), timedOut]);
  clearTimeout(timer);
  if (late) await state.worker.terminate();
}

function knownCode(code: string): ErrorCode {
  return (errorCodes as readonly string[]).includes(code) ? (code as ErrorCode) : 'INTERNAL';
}
