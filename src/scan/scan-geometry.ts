import { BlockrepError, checkBlockSize } from '../shared/index.js';

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
