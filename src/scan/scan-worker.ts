/**
 * Entry point of a scan worker thread. It opens its own reader (readers hold no shared state)
 * and its own hasher, then scans the segments the main thread sends, in order, posting one
 * result per segment with its buffers transferred. Any failure is posted as
 * `{ type: 'error', code, message }` so the main thread can rethrow it with the same code.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { openImage, type ImageReader } from '../image/index.js';
import { BlockrepError, wrapSystemError } from '../shared/index.js';
import { AsyncQueue } from './async-queue.js';
import type { SegmentTask } from './scan-batch.js';
import { ScanGeometry } from './scan-geometry.js';
import { resultTransferList, type FromScanWorker, type ScanWorkerInit, type ToScanWorker } from './scan-protocol.js';
import { arenaBytesFor, SegmentScanner } from './segment-scanner.js';
import { Xxh64Wasm } from './xxh64-wasm.js';

const port = parentPort;
if (port === null) throw new Error('scan-worker.js must run in a worker thread');

const init = workerData as ScanWorkerInit;
const tasks = new AsyncQueue<SegmentTask>();

port.on('message', (message: ToScanWorker) => {
  if (message.type === 'segment') tasks.push(message.task);
  else tasks.end(true);
});

function post(message: FromScanWorker, transfer: ArrayBuffer[] = []): void {
  port!.postMessage(message, transfer);
}

async function main(): Promise<void> {
  let reader: ImageReader | undefined;
  try {
    reader = await openImage(init.image, { syncReads: init.syncReads });
    if (reader.virtualSize !== init.virtualSize) {
      throw new BlockrepError(
        'IMAGE_UNREADABLE',
        `${init.image.path}: size changed while the scan started (${init.virtualSize} → ${reader.virtualSize} bytes)`,
      );
    }
    const geometry = new ScanGeometry(init.virtualSize, init.blockSize);
    const hasher = await Xxh64Wasm.create(arenaBytesFor(geometry, init.unitBytes, init.readAhead));
    const scanner = new SegmentScanner({
      reader,
      geometry,
      hasher,
      unitBytes: init.unitBytes,
      readAhead: init.readAhead,
      zeroHash: init.zeroHash,
      lastZeroHash: init.lastZeroHash,
      compress: init.compress,
      keys: init.keys,
    });
    post({ type: 'ready', inPlaceHash: hasher.inPlace });
    for await (const result of scanner.run(tasks)) {
      post({ type: 'result', result }, resultTransferList(result));
    }
  } catch (err) {
    tasks.end(true);
    const error = wrapSystemError(err, `scan of ${init.image.path}`);
    post({ type: 'error', code: error.code, message: error.message, details: plainDetails(error.details) });
  } finally {
    await reader?.close().catch(() => undefined);
  }
  post({ type: 'closed' });
  port!.close();
}

/** Details must survive structured clone; anything that would not is dropped. */
function plainDetails(details: Record<string, unknown> | undefined): Record<string, unknown> | undefined {
  if (details === undefined) return undefined;
  try {
    return structuredClone(details);
  } catch {
    return undefined;
  }
}

void main();
