import { createRequire } from 'node:module';
import { release } from 'node:os';

/**
 * syncfs(2) from blockrep's small Node-API addon (native/), which Node does not expose: one
 * call makes everything written on a file system durable. Loaded like the seek addon
 * (src/image/native-seek.ts): optional, and `BLOCKREP_NO_NATIVE=1` leaves it out. Without it a
 * repository fsyncs every chunk file it writes, as at sync level `file`.
 */
export type SyncFileSystem = (fd: number) => Promise<void>;

let cached: SyncFileSystem | null | undefined;

/** The addon's syncfs (runs on libuv's pool, returns a promise), or null when it cannot be used. */
export function loadSyncfs(): SyncFileSystem | null {
  if (cached !== undefined) return cached;
  cached = null;
  if (process.env['BLOCKREP_NO_NATIVE'] === '1') return cached;
  // Before Linux 5.8 syncfs reported no write-back error (it returned 0 after an EIO), so a
  // failed chunk write could go unseen; there, every chunk is fsynced instead.
  if (!syncfsReportsErrors(release())) return cached;
  try {
    // The same relative path works from src/backend/local (tests) and dist/backend/local.
    const require = createRequire(import.meta.url);
    const addon = require('../../../native/build/Release/blockrep_native.node') as { syncfs?: unknown };
    if (typeof addon.syncfs === 'function') cached = addon.syncfs as SyncFileSystem;
  } catch {
    // Not built: per-file fsync (see the module comment).
  }
  return cached;
}

/** Whether the running kernel's syncfs returns write-back errors (Linux >= 5.8). */
export function syncfsReportsErrors(kernelRelease: string): boolean {
  const m = /^(\d+)\.(\d+)/.exec(kernelRelease);
  if (!m) return false;
  const [major, minor] = [Number(m[1]), Number(m[2])];
  return major > 5 || (major === 5 && minor >= 8);
}
