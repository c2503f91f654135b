import { createRequire } from 'node:module';

type Release = (buffer: ArrayBuffer) => boolean;
let cached: Release | null | undefined;

function load(): Release | null {
  if (cached !== undefined) return cached;
  cached = null;
  if (process.env['BLOCKREP_NO_NATIVE'] === '1') return cached;
  try {
    const require = createRequire(import.meta.url);
    const addon = require('../../native/build/Release/blockrep_native.node') as { release?: unknown };
    if (typeof addon.release === 'function') cached = addon.release as Release;
  } catch {
    // Not built: buffers are freed when V8 collects them, as any other.
  }
  return cached;
}

/**
 * Frees the memory of a buffer its owner is done with now (the native addon detaches its
 * ArrayBuffer), rather than whenever V8 collects: V8 counts memory outside its heap loosely,
 * and a first backup's chunk blobs, 256 KiB–16 MiB each, piled up as garbage to 90 MiB and
 * more (bench/results/scan-notes.md). Only a view that covers its whole ArrayBuffer is freed
 * (a small Buffer shares a pool slab with others); every view on it reads as empty afterwards,
 * so the caller must hold the only use of it. Returns whether it was freed.
 */
export function releaseBuffer(view: Uint8Array): boolean {
  const buffer = view.buffer;
  if (!(buffer instanceof ArrayBuffer) || view.byteOffset !== 0 || view.byteLength !== buffer.byteLength || view.byteLength === 0) return false;
  const release = load();
  return release !== null && release(buffer);
}
