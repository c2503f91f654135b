import { type Repository, parseRetentionPolicy, selectVersionsToKeep, type KeepReason, type RetentionPolicy } from '../repository/index.js';
import { BlockrepError, isBlockrepError, assertDiskId, versionIdTime } from '../shared/index.js';

export interface PruneOptions {
  /** Only these disks (default: every disk of the repository). */
  disks?: string[];
  policy: RetentionPolicy;
  /** Say what would be removed; remove nothing and take no lock. */
  dryRun?: boolean;
  /** When the prune runs (the report's time; tests fix it). */
  now?: Date;
}

export interface PrunedDisk {
  disk: string;
  /** Oldest first, each with the rule(s) that keep it. */
  kept: Array<{ version: string; createdAt: string; reasons: KeepReason[] }>;
  /** Oldest first; with dryRun, those that would be removed. */
  removed: Array<{ version: string; createdAt: string }>;
  /** Set when the disk was left alone (its lock is held by a backup, say). */
  skipped?: { code: string; message: string };
}

export interface PruneReport {
  ok: boolean;
  dryRun: boolean;
  at: string;
  policy: RetentionPolicy;
  disks: PrunedDisk[];
  versionsKept: number;
  versionsRemoved: number;
  disksSkipped: number;
  durationMs: number;
}

/**
 * Applies a retention policy (retention-policy.ts) to each disk: versions no rule keeps are
 * removed; their chunks stay until `gc`. A disk is changed only under its lock, so a backup
 * running on it (whose parent is the latest version) is never pruned under it: such a disk is
 * reported as skipped and the others are still pruned. A version's time is the one in its id
 * (the UTC time its backup started).
 */
export async function pruneVersions(repo: Repository, options: PruneOptions): Promise<PruneReport> {
  const started = Date.now();
  const policy = parseRetentionPolicy(options.policy);
  const dryRun = options.dryRun ?? false;
  const disks = options.disks !== undefined ? options.disks.map((d) => assertDiskId(d)) : await repo.listDisks();
  const report: PruneReport = {
    ok: true,
    dryRun,
    at: (options.now ?? new Date()).toISOString(),
    policy,
    disks: [],
    versionsKept: 0,
    versionsRemoved: 0,
    disksSkipped: 0,
    durationMs: 0,
  };
  for (const disk of new Set(disks)) {
    const done = await pruneDisk(repo, disk, policy, dryRun, options.disks !== undefined);
    report.disks.push(done);
    report.versionsKept += done.kept.length;
    report.versionsRemoved += done.removed.length;
    if (done.skipped) {
      report.disksSkipped++;
      report.ok = false;
    }
  }
  report.durationMs = Date.now() - started;
  return report;
}

async function pruneDisk(repo: Repository, disk: string, policy: RetentionPolicy, dryRun: boolean, named: boolean): Promise<PrunedDisk> {
  const select = async (): Promise<PrunedDisk> => {
    const ids = await repo.listVersions(disk);
    if (ids.length === 0 && named) throw new BlockrepError('DISK_NOT_FOUND', `disk ${disk} has no versions in ${repo.location}`);
    const { kept, removed } = selectVersionsToKeep(
      ids.map((id) => ({ id, createdAt: new Date(versionIdTime(id)) })),
      policy,
    );
    return {
      disk,
      kept: kept.map((k) => ({ version: k.id, createdAt: k.createdAt.toISOString(), reasons: k.reasons })),
      removed: removed.map((r) => ({ version: r.id, createdAt: r.createdAt.toISOString() })),
    };
  };
  if (dryRun) return select();

  let lock;
  try {
    lock = await repo.lockDisk(disk, 'prune');
  } catch (err) {
    if (isBlockrepError(err) && err.code === 'REPO_LOCKED') {
      return { disk, kept: [], removed: [], skipped: { code: err.code, message: err.message } };
    }
    throw err;
  }
  try {
    // Chosen under the lock: no backup of this disk can publish meanwhile.
    const plan = await select();
    for (const r of plan.removed) await repo.removeVersion(disk, r.version);
    return plan;
  } finally {
    await lock.release();
  }
}
