import { BlockrepError } from '../shared/blockrep-error.js';

/** Block sizes the manifest format and the repository accept: powers of two, 4 KiB to 16 MiB. */
export const MIN_BLOCK_SIZE = 4 * 1024;
export const MAX_BLOCK_SIZE = 16 * 1024 * 1024;

/**
 * How an image of `virtualSize` bytes is cut into fixed-size blocks. Every block is
 * `blockSize` bytes except possibly the last, which holds the remainder of the image.
 */
export class ScanGeometry {
  readonly blockSize: number;
  readonly virtualSize: number;
  readonly blockCount: number;

  constructor(virtualSize: number, blockSize: number) {
    checkBlockSize(blockSize);
    if (!Number.isSafeInteger(virtualSize) || virtualSize < 0) {
      throw new BlockrepError('INVALID_SIZE', `image size ${virtualSize} is not a non-negative integer`);
    }
    this.blockSize = blockSize;
    this.virtualSize = virtualSize;
    this.blockCount = Math.ceil(virtualSize / blockSize);
  }

  blockOffset(block: number): number {
    return block * this.blockSize;
  }

  /** Length of `block`: blockSize, except for a short last block. */
  blockLength(block: number): number {
    return Math.min(this.blockSize, this.virtualSize - block * this.blockSize);
  }

  /** Length of the last block, or 0 for an empty image. */
  get lastBlockLength(): number {
    return this.blockCount === 0 ? 0 : this.blockLength(this.blockCount - 1);
  }
}

export function checkBlockSize(blockSize: number): void {
  const ok =
    Number.isSafeInteger(blockSize) &&
    blockSize >= MIN_BLOCK_SIZE &&
    blockSize <= MAX_BLOCK_SIZE &&
    (blockSize & (blockSize - 1)) === 0;
  if (!ok) {
    throw new BlockrepError(
      'INVALID_SIZE',
      `block size ${blockSize} is not a power of two between ${MIN_BLOCK_SIZE} and ${MAX_BLOCK_SIZE} bytes`,
    );
  }
}
