import { CHUNK_HEADER_BYTES } from '../chunk/index.js';
import { MANIFEST_ENVELOPE_HEADER_BYTES, chunkEnvelopeProblem, manifestEnvelopeProblem } from '../crypto/index.js';
import type { Repository } from '../repository/index.js';
import { BlockrepError, MAX_BLOCK_SIZE, TaskPool, assertDiskId, isBlockrepError } from '../shared/index.js';
import type { ProgressListener } from './progress.js';
import type { Damage, VerifyReport } from './verify-repository.js';

const MAX_LISTED_DAMAGE = 10_000;

/**
 * `verify --without-key` of an encrypted repository: what its holder can check. Every manifest
 * (of the disk asked for) and every chunk of the repository must be a well-formed sealed object
 * of a plausible size; nothing is opened, so nothing says the content is intact or that the
 * chunks a version needs are there. The report's scope says so.
 */
export async function verifyEnvelopes(repo: Repository, req: { diskId?: string }, options: { concurrency?: number; onProgress?: ProgressListener | undefined } = {}): Promise<VerifyReport> {
  if (!repo.encrypted) throw new BlockrepError('USAGE', `${repo.location} is not encrypted: verify it in full (without --without-key)`);
  const started = Date.now();
  const report: VerifyReport = { ok: true, scope: 'envelopes', disks: 0, versions: 0, chunksChecked: 0, bytesChecked: 0, damage: [], damageNotListed: 0, durationMs: 0 };
  const addDamage = (d: Damage): void => {
    report.ok = false;
    if (report.damage.length < MAX_LISTED_DAMAGE) report.damage.push(d);
    else report.damageNotListed++;
  };
  const disks = req.diskId !== undefined ? [assertDiskId(req.diskId)] : await repo.listDisks();
  report.disks = disks.length;
  const pool = new TaskPool(options.concurrency ?? 8);
  for (const disk of disks) {
    const versions = await repo.listVersions(disk);
    if (req.diskId !== undefined && versions.length === 0) throw new BlockrepError('DISK_NOT_FOUND', `disk ${disk} has no versions in ${repo.location}`);
    for (const version of versions) {
      report.versions++;
      await pool.submit(async () => {
        try {
          const { head, size } = await repo.sealedManifestHead(disk, version, MANIFEST_ENVELOPE_HEADER_BYTES);
          report.bytesChecked += size;
          const problem = manifestEnvelopeProblem(head, size);
          if (problem !== undefined) addDamage({ disk, version, code: 'REPO_CORRUPT', problem: `manifest: ${problem}` });
        } catch (err) {
          if (!isBlockrepError(err)) throw err;
          addDamage({ disk, version, code: err.code, problem: err.message });
        }
      });
    }
  }
  if (req.diskId === undefined) {
    for await (const chunk of repo.listChunks()) {
      await pool.submit(async () => {
        try {
          const blob = await repo.readChunkBlob(chunk.id);
          report.bytesChecked += blob.length;
          const problem = chunkEnvelopeProblem(blob, MAX_BLOCK_SIZE + CHUNK_HEADER_BYTES);
          if (problem !== undefined) addDamage({ disk: '-', version: '-', chunk: chunk.id, code: 'CHUNK_CORRUPT', problem: `chunk ${chunk.id}: ${problem}` });
        } catch (err) {
          if (!isBlockrepError(err)) throw err;
          addDamage({ disk: '-', version: '-', chunk: chunk.id, code: err.code, problem: err.message });
        } finally {
          report.chunksChecked++;
        }
      });
    }
  }
  await pool.drain();
  report.durationMs = Date.now() - started;
  return report;
}
