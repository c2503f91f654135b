/**
 * scan — the hot loop: reads an image in fixed-size blocks with read-ahead (in worker threads),
 * hashes each block with xxHash64, and encodes the blocks that changed against the parent.
 * Invariants: bounded buffers and concurrency; exact results; stops on abort.
 */
export { scanImage, type BlockRange } from './scan-image.js';
