import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ReadCoverage } from '../../src/nbd/read-coverage.js';

describe('ReadCoverage', () => {
  it('accepts ranges in any order, refuses any overlap, merges neighbours', () => {
    const c = new ReadCoverage();
    expect(c.add(100, 200)).toBe(true);
    expect(c.add(0, 50)).toBe(true);
    expect(c.add(199, 201)).toBe(false);
    expect(c.add(49, 60)).toBe(false);
    expect(c.add(50, 100)).toBe(true);
    expect(c.add(0, 1)).toBe(false);
    expect(c.add(200, 300)).toBe(true);
    expect(c.add(150, 151)).toBe(false);
    expect(c.coveredBytes).toBe(300);
  });

  it('agrees with a byte map on random ranges', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat({ max: 200 }), fc.integer({ min: 1, max: 40 })), { maxLength: 40 }), (ranges) => {
        const c = new ReadCoverage();
        const seen = new Uint8Array(300);
        let covered = 0;
        for (const [start, len] of ranges) {
          const overlaps = seen.subarray(start, start + len).some((b) => b === 1);
          expect(c.add(start, start + len)).toBe(!overlaps);
          if (!overlaps) {
            seen.fill(1, start, start + len);
            covered += len;
          }
        }
        expect(c.coveredBytes).toBe(covered);
      }),
    );
  });
});
