import xxhash from 'xxhash-wasm';
import { describe, expect, it } from 'vitest';
import { Xxh64Wasm } from '../../src/scan/xxh64-wasm.js';
import { zeroBlockHash } from '../../src/scan/zero-block-hash.js';
import { regionBytes } from './scan-fixtures.js';

describe('Xxh64Wasm', () => {
  it('hashes in place, equal to the package’s own h64Raw, at any length and offset', async () => {
    const api = await xxhash();
    const hasher = await Xxh64Wasm.create(1 << 20);
    expect(hasher.inPlace).toBe(true);
    const data = regionBytes({ kind: 'random', bytes: 1 << 20, seed: 7 });
    hasher.view(0, data.length).set(data);
    for (const [offset, length] of [[0, 0], [0, 1], [3, 31], [5, 32], [64, 4096], [4095, 65537], [0, 1 << 20]] as const) {
      expect(hasher.hash(offset, length), `${offset}+${length}`).toBe(api.h64Raw(data.subarray(offset, offset + length)));
    }
  });

  it('matches the xxHash64 reference vector for the empty input', async () => {
    const hasher = await Xxh64Wasm.create(65536);
    expect(hasher.hash(0, 0)).toBe(0xef46db3751d8e999n);
  });
});

describe('zeroBlockHash', () => {
  it('is the hash of that many zero bytes', async () => {
    const api = await xxhash();
    for (const length of [0, 512, 4096, 65536, 1 << 20, 3 * 4096 + 512]) {
      expect(await zeroBlockHash(length)).toBe(api.h64Raw(new Uint8Array(length)));
    }
  });

  it('refuses lengths beyond the largest block', async () => {
    await expect(zeroBlockHash(-1)).rejects.toMatchObject({ code: 'INVALID_SIZE' });
    await expect(zeroBlockHash(32 << 20)).rejects.toMatchObject({ code: 'INVALID_SIZE' });
  });
});
