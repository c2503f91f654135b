import { systemClock, type Clock } from './clock.js';

/**
 * Limits a flow of bytes to `bytesPerSecond` on average, across every caller sharing it (all
 * requests of a process share one link). A virtual clock: each take(n) is scheduled after the
 * bytes before it, so the long-run rate is exact however bursty the callers; a caller may run
 * up to `burstBytes` ahead of that clock, and idle time earns no credit.
 */
export class RateLimiter {
  private nextFree = 0;

  constructor(
    readonly bytesPerSecond: number,
    private readonly burstBytes: number = Math.max(64 * 1024, bytesPerSecond / 20),
    private readonly clock: Clock = systemClock,
  ) {
    if (!(bytesPerSecond > 0)) throw new RangeError('bytesPerSecond must be positive');
  }

  /** Resolves when `bytes` may pass. */
  async take(bytes: number): Promise<void> {
    if (bytes <= 0) return;
    const t = this.clock.monotonicMs();
    const burstMs = (this.burstBytes / this.bytesPerSecond) * 1000;
    // Idle time earns no credit; callers may run at most one burst ahead of the clock.
    const start = Math.max(this.nextFree, t);
    this.nextFree = start + (bytes / this.bytesPerSecond) * 1000;
    const wait = this.nextFree - burstMs - t;
    if (wait > 0) await this.clock.sleep(wait);
  }
}

/** Passes a byte stream through a limiter in slices, so a large body is paced, not bursted. */
export async function* throttle(source: AsyncIterable<Uint8Array> | Uint8Array, limiter: RateLimiter, sliceBytes = 64 * 1024): AsyncIterable<Uint8Array> {
  const pieces = source instanceof Uint8Array ? [source] : source;
  for await (const piece of pieces) {
    for (let off = 0; off < piece.byteLength; off += sliceBytes) {
      const slice = piece.subarray(off, Math.min(piece.byteLength, off + sliceBytes));
      await limiter.take(slice.byteLength);
      yield slice;
    }
  }
}
