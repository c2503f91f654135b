import type { Repository } from '../repository/index.js';
import { BlockrepError, isBlockrepError, assertDiskId } from '../shared/index.js';

export interface VersionSummary {
  version: string;
  parentVersion: string | null;
  createdAt: string;
  imageBytes: number;
  blockSize: number;
  blocks: number;
  changedBlocks: number;
  zeroBlocks: number;
  storedBytes: number;
  source: { kind: string; path?: string | undefined; format?: string | undefined; vm?: string | undefined };
  /** Set when the manifest header cannot be read. */
  problem?: string;
}

export interface DiskSummary {
  disk: string;
  versions: VersionSummary[];
}

export async function listVersions(repo: Repository, req: { diskId?: string }): Promise<DiskSummary[]> {
  const disks = req.diskId !== undefined ? [assertDiskId(req.diskId)] : await repo.listDisks();
  const out: DiskSummary[] = [];
  for (const disk of disks) {
    const ids = await repo.listVersions(disk);
    if (req.diskId !== undefined && ids.length === 0) {
      throw new BlockrepError('DISK_NOT_FOUND', `disk ${disk} has no versions in ${repo.location}`);
    }
    const versions: VersionSummary[] = [];
    for (const version of ids) {
      try {
        const h = await repo.versionHeader(disk, version);
        versions.push({
          version,
          parentVersion: h.meta.parentVersionId,
          createdAt: new Date(h.createdMs).toISOString(),
          imageBytes: h.imageBytes,
          blockSize: h.blockSize,
          blocks: h.blockCount,
          changedBlocks: h.changedBlocks,
          zeroBlocks: h.zeroBlocks,
          storedBytes: h.storedBytes,
          source: h.meta.source,
        });
      } catch (err) {
        if (!isBlockrepError(err)) throw err;
        versions.push({ version, parentVersion: null, createdAt: '', imageBytes: 0, blockSize: 0, blocks: 0, changedBlocks: 0, zeroBlocks: 0, storedBytes: 0, source: { kind: 'unknown' }, problem: err.message });
      }
    }
    out.push({ disk, versions });
  }
  return out;
}
