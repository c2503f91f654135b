import type { Repository } from '../repository/index.js';
import { BlockrepError, isBlockrepError, toBlockrepError, type ErrorCode } from '../shared/index.js';
import { backupImage, type BackupImageOptions, type BackupImageRequest, type DiskBackupReport, type TrackedRead } from './backup-image.js';

/** A disk of a live VM whose backup failed; the others go on (and every overlay is committed). */
export interface VmBackupFailure {
  disk: string;
  path: string;
  code: ErrorCode;
  message: string;
}

/**
 * Backs up one frozen base of a live VM (QMP or libvirt: the same read once the snapshot is
 * taken). A failure is returned, not thrown, so the caller commits every overlay back whatever
 * happened; an interrupt is neither (nothing half-done was published).
 */
export async function backupFrozenBase(
  repo: Repository,
  base: { path: string; format: 'raw' | 'qcow2'; diskId: string; vm: string; blockSize: number | undefined; tracked?: TrackedRead | undefined; nbd?: BackupImageRequest['nbd'] },
  options: Omit<BackupImageOptions, 'signal'> & { signal?: AbortSignal | undefined },
): Promise<{ report: DiskBackupReport } | { failure: VmBackupFailure } | undefined> {
  try {
    const report = await backupImage(
      repo,
      {
        path: base.path,
        format: base.format,
        diskId: base.diskId,
        ...(base.blockSize !== undefined ? { blockSize: base.blockSize } : {}),
        source: { kind: 'live', vm: base.vm },
        ...(base.tracked ? { tracked: base.tracked } : {}),
        ...(base.nbd ? { nbd: base.nbd } : {}),
      },
      {
        ...(options.workers !== undefined ? { workers: options.workers } : {}),
        ...(options.compress !== undefined ? { compress: options.compress } : {}),
        ...(options.writeConcurrency !== undefined ? { writeConcurrency: options.writeConcurrency } : {}),
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.onProgress ? { onProgress: options.onProgress } : {}),
      },
    );
    return { report };
  } catch (err) {
    const e = toBlockrepError(err);
    if (e.code === 'INTERRUPTED' && options.signal?.aborted) return undefined;
    return { failure: { disk: base.diskId, path: base.path, code: e.code, message: e.message } };
  }
}

export interface LiveDiskReport extends DiskBackupReport {
  /** Time the disk ran on its overlay: snapshot → the VM back on its base. */
  overlayMs: number;
}

/**
 * Waits for every overlay's commit (started as soon as its base was read) and pairs each with
 * its disk's report. Any commit that failed makes the whole run COMMIT_FAILED, naming every
 * failed disk and how to recover: the VM still runs on those overlays.
 */
export async function collectCommits<T>(
  targets: readonly T[],
  commits: ReadonlyMap<T, Promise<{ pivotedAt: number; warning?: string | undefined }>>,
  done: ReadonlyMap<T, DiskBackupReport>,
  snapshotAt: number,
  recoveryStep: string,
  onWarning?: (message: string) => void,
): Promise<LiveDiskReport[]> {
  const reports: LiveDiskReport[] = [];
  const commitErrors: BlockrepError[] = [];
  for (const t of targets) {
    try {
      const result = await commits.get(t)!;
      if (result.warning) onWarning?.(result.warning);
      const r = done.get(t);
      if (r) reports.push({ ...r, overlayMs: result.pivotedAt - snapshotAt });
    } catch (err) {
      commitErrors.push(isBlockrepError(err) ? err : new BlockrepError('COMMIT_FAILED', String(err), { cause: err }));
    }
  }
  if (commitErrors.length > 0) {
    throw new BlockrepError('COMMIT_FAILED', commitErrors.map((e) => e.message).join('\n'), {
      cause: commitErrors[0],
      details: { recovery: recoveryStep, disks: reports.map((r) => r.disk), failed: commitErrors.map((e) => e.details ?? {}) },
    });
  }
  return reports;
}
