import type { Repository } from '../repository/index.js';
import { toBlockrepError, type ErrorCode } from '../shared/index.js';
import { backupImage, type BackupImageOptions, type DiskBackupReport } from './backup-image.js';

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
  base: { path: string; format: 'raw' | 'qcow2'; diskId: string; vm: string; blockSize: number | undefined },
  options: Omit<BackupImageOptions, 'signal'> & { signal?: AbortSignal | undefined },
): Promise<{ report: DiskBackupReport } | { failure: VmBackupFailure } | undefined> {
  try {
    const report = await backupImage(
      repo,
      { path: base.path, format: base.format, diskId: base.diskId, ...(base.blockSize !== undefined ? { blockSize: base.blockSize } : {}), source: { kind: 'live', vm: base.vm } },
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
