import { createRequire } from 'node:module';

/**
 * lseek(2) from blockrep's small Node-API addon (native/), which Node itself does not expose.
 * Readers use it to find holes in sparse files (SEEK_DATA / SEEK_HOLE) and the size of block
 * devices (SEEK_END). The addon is optional: when it was not built (no compiler at install
 * time) readers still work, they just report sparse regions as data and read them.
 */
export interface SeekAddon {
  /** New offset, or -1 when the kernel answers ENXIO (no data after offset / past the end). */
  seek(fd: number, offset: number, whence: number): number;
  readonly SEEK_END: number;
  readonly SEEK_DATA: number;
  readonly SEEK_HOLE: number;
}

let cached: SeekAddon | null | undefined;

/** The addon, or null when it cannot be loaded. Loaded once per thread. */
export function loadSeekAddon(): SeekAddon | null {
  if (cached !== undefined) return cached;
  cached = null;
  if (process.env['BLOCKREP_NO_NATIVE'] === '1') return cached;
  try {
    // The same relative path works from src/image (tests) and dist/image (built code).
    const require = createRequire(import.meta.url);
    const addon = require('../../native/build/Release/blockrep_native.node') as Partial<SeekAddon>;
    if (
      typeof addon.seek === 'function' &&
      typeof addon.SEEK_END === 'number' &&
      typeof addon.SEEK_DATA === 'number' &&
      typeof addon.SEEK_HOLE === 'number'
    ) {
      cached = addon as SeekAddon;
    }
  } catch {
    // Not built: fall back to reading everything (see the module comment).
  }
  return cached;
}
