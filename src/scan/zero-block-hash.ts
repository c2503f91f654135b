import { BlockrepError, MAX_BLOCK_SIZE } from '../shared/index.js';
import { Xxh64Wasm } from './xxh64-wasm.js';

const cache = new Map<number, Promise<bigint>>();

/**
 * xxh64 (seed 0) of `length` zero bytes: the hash every all-zero block of that length has, so
 * zero regions get their hash without being read. Computed on a fresh WebAssembly memory,
 * which starts zeroed, so no zero buffer is built; cached per length (a scan needs at most
 * two lengths: the block size and the short last block).
 */
export function zeroBlockHash(length: number): Promise<bigint> {
  if (!Number.isSafeInteger(length) || length < 0 || length > MAX_BLOCK_SIZE) {
    return Promise.reject(new BlockrepError('INVALID_SIZE', `zero block length ${length} is outside 0..${MAX_BLOCK_SIZE}`));
  }
  let hash = cache.get(length);
  if (hash === undefined) {
    hash = computeZeroHash(length);
    if (cache.size >= 64) cache.clear(); // lengths are few; never let odd callers grow this
    cache.set(length, hash);
  }
  return hash;
}

async function computeZeroHash(length: number): Promise<bigint> {
  const hasher = await Xxh64Wasm.create(Math.max(length, 1));
  hasher.view(0, length).fill(0); // the arena starts zeroed; say so rather than rely on it
  return hasher.hash(0, length);
}
