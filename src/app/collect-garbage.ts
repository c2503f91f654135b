import { isZeroId } from '../manifest/index.js';
import type { Repository } from '../repository/index.js';
import { BlockrepError, isBlockrepError, TaskPool, type Clock } from '../shared/index.js';

/** Like Proxmox Backup Server: a day and five minutes, so a day-long backup's chunks are safe. */
export const DEFAULT_GC_GRACE_MS = (24 * 60 + 5) * 60_000;
/**
 * Always kept on top of the grace: file times come from the kernel's coarse clock, which lags
 * the process clock by up to a tick, so "written after the cutoff" must not hinge on milliseconds.
 */
export const GC_CLOCK_SLACK_MS = 1000;
/** Chunk removals in flight (each one request over HTTP). */
const REMOVE_CONCURRENCY = 8;
/**
 * Chunks are remembered by the first 16 hex digits of their id (64 bits): ~53 bytes each in
 * memory (measured: 1M ids, 53 MB of heap), about half of a whole id. Two ids sharing a
 * prefix only make gc keep a chunk it could remove.
 */
const MARK_PREFIX_HEX = 16;

export interface GcOptions {
  /** Report what would be removed; remove nothing. */
  dryRun?: boolean;
  /** Chunks written or touched within this long before gc started are kept (default 24 h 5 min). */
  graceMs?: number;
  /** When gc starts (tests fix it). */
  now?: Date;
  /** What "now" and the duration are read from; the repository's clock by default. */
  clock?: Clock;
}

export interface GcReport {
  ok: boolean;
  dryRun: boolean;
  startedAt: string;
  graceMs: number;
  /** Unreferenced chunks last written or touched before this are removed. */
  cutoff: string;
  /** The disk lock whose holder started before gc minus grace, and so moved the cutoff back. */
  cutoffHeldBy?: { lock: string; since: string; purpose?: string };
  disks: number;
  versions: number;
  chunksReferenced: number;
  bytesReferenced: number;
  /** With dryRun: that would be removed. */
  chunksRemoved: number;
  bytesRemoved: number;
  /** Unreferenced but written or touched after the cutoff (a backup in progress, or too young). */
  chunksKeptYoung: number;
  bytesKeptYoung: number;
  tempFilesRemoved: number;
  tempBytesRemoved: number;
  durationMs: number;
}

/**
 * Mark and sweep, safe while backups run:
 *
 * 1. The cutoff is gc's start minus the grace, moved back to the start of the oldest disk lock
 *    present (a backup that started earlier may have written or touched chunks since it took
 *    its lock, for a version not yet published) — and a second of clock slack.
 * 2. Mark: every published manifest of every disk is read; the chunks they use are remembered.
 *    A version that vanishes while being read (pruned meanwhile) makes gc list that disk again,
 *    so the versions that replaced it are read too.
 * 3. Sweep: a chunk no manifest uses is removed only if it was last written or touched before
 *    the cutoff — checked again by the backend at the moment of removal, atomically against
 *    touches (Backend.removeIfOlder).
 *
 * Why a chunk that a version published later will use is never removed: that version's backup
 * wrote or touched (Repository.hasChunks) every chunk it did not inherit from its parent, after
 * taking its disk lock — so after the cutoff (its lock was seen in step 1, or taken after it).
 * What it inherited is used by its parent, which is read in step 2 (or was pruned, and then its
 * successors are). Stale temporary files of interrupted writes are swept with the same cutoff.
 */
export async function collectGarbage(repo: Repository, options: GcOptions = {}): Promise<GcReport> {
  const clock = options.clock ?? repo.clock;
  const started = options.now ?? new Date(clock.now());
  const startedMs = clock.monotonicMs();
  const graceMs = options.graceMs ?? DEFAULT_GC_GRACE_MS;
  if (!Number.isSafeInteger(graceMs) || graceMs < 0) throw new BlockrepError('USAGE', `the gc grace must be a whole, non-negative number of ms, not ${graceMs}`);
  if (!repo.collectsGarbage) throw new BlockrepError('USAGE', `${repo.location} does not support garbage collection`);

  // 1. The cutoff.
  let cutoffMs = started.getTime() - graceMs;
  let cutoffHeldBy: GcReport['cutoffHeldBy'];
  for (const lock of await repo.listLocks()) {
    const parsed = lock.holder ? Date.parse(lock.holder.createdAt) : NaN;
    // A lock we cannot read is judged by its file time: at worst its last renewal, so earlier is safer.
    const since = Number.isFinite(parsed) ? Math.min(parsed, lock.mtimeMs ?? parsed) : (lock.mtimeMs ?? 0);
    if (since < cutoffMs) {
      cutoffMs = since;
      cutoffHeldBy = { lock: lock.key, since: new Date(since).toISOString(), ...(lock.holder ? { purpose: lock.holder.purpose } : {}) };
    }
  }
  cutoffMs -= GC_CLOCK_SLACK_MS;

  // 2. Mark.
  const referenced = new Set<string>();
  const disks = await repo.listDisks();
  let versions = 0;
  for (const disk of disks) versions += await markDisk(repo, disk, referenced);

  // 3. Sweep.
  const report: GcReport = {
    ok: true,
    dryRun: options.dryRun ?? false,
    startedAt: started.toISOString(),
    graceMs,
    cutoff: new Date(cutoffMs).toISOString(),
    ...(cutoffHeldBy ? { cutoffHeldBy } : {}),
    disks: disks.length,
    versions,
    chunksReferenced: 0,
    bytesReferenced: 0,
    chunksRemoved: 0,
    bytesRemoved: 0,
    chunksKeptYoung: 0,
    bytesKeptYoung: 0,
    tempFilesRemoved: 0,
    tempBytesRemoved: 0,
    durationMs: 0,
  };
  const young = (size: number): void => {
    report.chunksKeptYoung++;
    report.bytesKeptYoung += size;
  };
  const pool = new TaskPool(REMOVE_CONCURRENCY);
  try {
    for await (const chunk of repo.listChunks()) {
      if (referenced.has(chunk.id.slice(0, MARK_PREFIX_HEX))) {
        report.chunksReferenced++;
        report.bytesReferenced += chunk.size;
      } else if (chunk.mtimeMs !== undefined && chunk.mtimeMs >= cutoffMs) {
        young(chunk.size);
      } else if (report.dryRun) {
        report.chunksRemoved++;
        report.bytesRemoved += chunk.size;
      } else {
        await pool.submit(async () => {
          const outcome = await repo.removeChunkIfOlder(chunk.id, cutoffMs);
          if (outcome === 'removed') {
            report.chunksRemoved++;
            report.bytesRemoved += chunk.size;
          } else if (outcome === 'young') {
            young(chunk.size);
          }
        });
      }
    }
    await pool.drain();
  } finally {
    await pool.settle();
  }
  if (!report.dryRun) {
    const temps = await repo.removeStaleTemps(cutoffMs);
    report.tempFilesRemoved = temps.files;
    report.tempBytesRemoved = temps.bytes;
  }
  report.durationMs = Math.round(clock.monotonicMs() - startedMs);
  return report;
}

/** Marks the chunks of every version of a disk; returns how many versions were read. */
async function markDisk(repo: Repository, disk: string, referenced: Set<string>): Promise<number> {
  const done = new Set<string>();
  for (;;) {
    let vanished = false;
    for (const version of await repo.listVersions(disk)) {
      if (done.has(version)) continue;
      try {
        const manifest = await repo.openManifest(disk, version, { cache: false });
        for await (const entries of manifest.batches()) {
          for (let i = 0; i < entries.hashes.length; i++) {
            if (!isZeroId(entries.ids, i)) referenced.add(entries.ids.toString('hex', i * 32, i * 32 + MARK_PREFIX_HEX / 2));
          }
        }
        done.add(version);
      } catch (err) {
        if (!isBlockrepError(err)) throw err;
        if (!(await repo.listVersions(disk)).includes(version)) {
          vanished = true; // pruned while gc read it: list again, so its successors are read
          continue;
        }
        // Without the manifest, gc cannot know which chunks it uses: remove nothing.
        throw new BlockrepError(err.code, `gc stopped before removing anything: disk ${disk} version ${version} cannot be read (${err.message}); run blockrep verify`, {
          cause: err,
        });
      }
    }
    if (!vanished) return done.size;
  }
}
