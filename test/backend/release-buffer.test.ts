import { describe, expect, it } from 'vitest';
import { releaseBuffer } from '../../src/backend/index.js';

describe('releaseBuffer', () => {
  it('frees a buffer that owns its whole ArrayBuffer at once: the memory is gone, every view reads empty', () => {
    const before = process.memoryUsage().arrayBuffers;
    const blobs = Array.from({ length: 32 }, () => Buffer.allocUnsafe(1 << 20).fill(7));
    expect(process.memoryUsage().arrayBuffers - before).toBeGreaterThanOrEqual(32 << 20);
    const view = new Uint8Array(blobs[0]!.buffer, 0, 16);
    for (const b of blobs) expect(releaseBuffer(b)).toBe(true);
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(4 << 20);
    expect(blobs[0]!.byteLength).toBe(0);
    expect(view.byteLength).toBe(0);
    expect(releaseBuffer(blobs[0]!)).toBe(false); // already freed
  });

  it('leaves alone a view on part of a buffer: a small Buffer from the shared pool, a subarray', () => {
    const small = Buffer.from('pooled');
    const neighbour = Buffer.from('next door');
    expect(small.buffer.byteLength).toBeGreaterThan(small.byteLength);
    expect(releaseBuffer(small)).toBe(false);
    expect(neighbour.toString()).toBe('next door');
    const big = Buffer.alloc(1 << 16, 1);
    expect(releaseBuffer(big.subarray(10))).toBe(false);
    expect(big.byteLength).toBe(1 << 16);
  });
});
