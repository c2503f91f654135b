import { BlockrepError } from './blockrep-error.js';

/**
 * The one rule for block sizes, shared by backups, the manifest format, the job config and the
 * server: a power of two from 4 KiB to 16 MiB. A chunk is never larger than a block.
 */
export const MIN_BLOCK_SIZE = 4 * 1024;
export const MAX_BLOCK_SIZE = 16 * 1024 * 1024;

export function isValidBlockSize(blockSize: number): boolean {
  return Number.isSafeInteger(blockSize) && blockSize >= MIN_BLOCK_SIZE && blockSize <= MAX_BLOCK_SIZE && (blockSize & (blockSize - 1)) === 0;
}

export function checkBlockSize(blockSize: number): void {
  if (!isValidBlockSize(blockSize)) {
    throw new BlockrepError('INVALID_SIZE', `invalid block size ${blockSize}: use a power of two from 4K to 16M`);
  }
}
