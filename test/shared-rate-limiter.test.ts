import { describe, expect, it } from 'vitest';
import { ManualClock } from '../src/shared/clock.js';
import { RateLimiter, throttle } from '../src/shared/rate-limiter.js';

/** A fake clock: sleeping advances it, so rates are checked exactly and instantly. */
function clock() {
  const c = new ManualClock(0, { autoAdvance: true });
  return { clock: c, sleep: (ms: number) => c.sleep(ms), elapsed: () => c.monotonicMs() };
}

describe('rate limiter', () => {
  it('holds a long-run rate within 1 % whatever the request sizes, across concurrent callers', async () => {
    const c = clock();
    const rate = 20 * 1024 * 1024; // 20M, as `--bwlimit 20M`
    const limiter = new RateLimiter(rate, undefined, c.clock);
    let total = 0;
    const sizes = [4096, 65536, 1 << 20, 300, 2 << 20, 12345];
    await Promise.all(
      Array.from({ length: 8 }, async (_, k) => {
        for (let i = 0; i < 200; i++) {
          const n = sizes[(i + k) % sizes.length]!;
          await limiter.take(n);
          total += n;
        }
      }),
    );
    const achieved = total / (c.elapsed() / 1000);
    expect(achieved).toBeLessThanOrEqual(rate * 1.01 + 1);
    expect(achieved).toBeGreaterThanOrEqual(rate * 0.95);
  });

  it('allows one burst after idling, never more', async () => {
    const c = clock();
    const limiter = new RateLimiter(1000, 100, c.clock);
    await limiter.take(1000); // 1 s
    const afterFirst = c.elapsed();
    // Idle 10 s, then 2000 bytes: one 100-byte burst of credit only.
    await c.sleep(10_000);
    const t0 = c.elapsed();
    await limiter.take(2000);
    expect(c.elapsed() - t0).toBeCloseTo(1900, 0);
    expect(afterFirst).toBeCloseTo(900, 0);
  });

  it('paces a stream in slices', async () => {
    const c = clock();
    const limiter = new RateLimiter(64 * 1024, 0.0001, c.clock);
    const out: number[] = [];
    for await (const s of throttle(new Uint8Array(256 * 1024), limiter, 64 * 1024)) out.push(s.byteLength);
    expect(out).toEqual([65536, 65536, 65536, 65536]);
    expect(c.elapsed()).toBeCloseTo(4000, -1);
  });
});
