import type { RepositoryKeys } from '../crypto/index.js';
import type { ImageSpec } from '../image/index.js';
import type { SegmentResult, SegmentTask } from './scan-batch.js';

/**
 * Messages between the main thread and a scan worker. Everything is plain data (structured
 * clone); a result's arrays and chunk blobs are transferred, not copied.
 */
export interface ScanWorkerInit {
  image: ImageSpec;
  blockSize: number;
  /** Size the main thread saw; a worker whose reader disagrees refuses to scan. */
  virtualSize: number;
  compress: boolean;
  /** An encrypted repository's keys: chunks are then named by keyed hash and sealed. */
  keys: RepositoryKeys | undefined;
  zeroHash: bigint;
  lastZeroHash: bigint;
  unitBytes: number;
  readAhead: number;
  syncReads: boolean;
}

export type ToScanWorker =
  | { type: 'segment'; task: SegmentTask }
  /** Drop queued segments, finish the current unit, close the reader, exit. */
  | { type: 'close' };

export type FromScanWorker =
  | { type: 'ready'; inPlaceHash: boolean }
  | { type: 'result'; result: SegmentResult }
  | { type: 'error'; code: string; message: string; details?: Record<string, unknown> | undefined }
  | { type: 'closed' };

/** Buffers to transfer with a result. Pooled (shared) buffers are copied out first instead. */
export function resultTransferList(result: SegmentResult): ArrayBuffer[] {
  const list: ArrayBuffer[] = [result.hashes.buffer as ArrayBuffer, result.zero.buffer as ArrayBuffer, result.changed.buffer as ArrayBuffer];
  for (const entry of result.chunks) {
    let blob = entry.chunk.blob;
    // Small Buffers live in a shared pool slab: transferring it would detach its neighbours.
    if (blob.byteOffset !== 0 || blob.buffer.byteLength !== blob.byteLength) {
      blob = new Uint8Array(blob);
      entry.chunk = { ...entry.chunk, blob };
    }
    list.push(blob.buffer as ArrayBuffer);
  }
  return list;
}
