import { describe, expect, it } from 'vitest';
import { isAllZero } from '../../src/scan/all-zero.js';

describe('isAllZero', () => {
  it('tells zero from non-zero bytes anywhere, across its 1 MiB comparison window', () => {
    const big = new Uint8Array(3 * 1024 * 1024 + 17);
    expect(isAllZero(big)).toBe(true);
    expect(isAllZero(big.subarray(5, 5))).toBe(true);
    for (const at of [0, 1024 * 1024 - 1, 1024 * 1024, big.length - 1]) {
      big[at] = 1;
      expect(isAllZero(big), `byte ${at}`).toBe(false);
      expect(isAllZero(big.subarray(at + 1))).toBe(true);
      big[at] = 0;
    }
  });
});
