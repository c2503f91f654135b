import { idHex, isZeroId } from '../manifest/index.js';
import type { Repository } from '../repository/index.js';
import { BlockrepError, isBlockrepError, assertDiskId, TaskPool } from '../shared/index.js';
import type { ProgressListener } from './progress.js';

export interface VerifyRequest {
  diskId?: string;
  version?: string;
  /**
   * Scrub: check only about `percent` % of the distinct chunks (every manifest is still read
   * and checked). Which ones is decided by chunk id and `seed` (by default the day's window,
   * see sampleSeedForDay), so runs on successive days cover different chunks and a test can
   * repeat a run.
   */
  sample?: { percent: number; seed?: number };
}

export interface Damage {
  disk: string;
  version: string;
  /** Absent when the manifest itself is damaged. */
  block?: number;
  chunk?: string;
  code: string;
  problem: string;
}

export interface VerifyReport {
  ok: boolean;
  /**
   * What was checked: `content` (every chunk opened, decoded and checked against its id; every
   * manifest against its digest), or `envelopes` (an encrypted repository without its key: only
   * the form and sizes of the sealed objects, verify-envelopes.ts).
   */
  scope: 'content' | 'envelopes';
  disks: number;
  versions: number;
  chunksChecked: number;
  bytesChecked: number;
  /** With a sample: the share asked for and the seed that chose the chunks. */
  sample?: { percent: number; seed: number };
  damage: Damage[];
  /** Damage entries beyond this many are counted, not listed. */
  damageNotListed: number;
  durationMs: number;
}

const MAX_LISTED_DAMAGE = 10_000;
const SEED_RANGE = 2 ** 32;

/**
 * The default seed: the window moves on by its own width every UTC day, so the windows of
 * successive days tile the range and a nightly `--sample P` checks every chunk within
 * ceil(100 / P) nights (5 %: 20 nights), then starts over.
 */
export function sampleSeedForDay(percent: number, now: number = Date.now()): number {
  const day = Math.floor(now / 86_400_000);
  return Math.floor(((day * percent) / 100) % 1 * SEED_RANGE) % SEED_RANGE;
}

/**
 * Whether a chunk is in the sample: chunk ids are SHA-256 digests, uniform, so the chunks whose
 * first 32 bits fall in a window of `percent` % of the 32-bit range, starting at `seed`, are a
 * uniform sample; another seed is another window, and a fixed seed repeats a run.
 */
export function inSample(id: string, percent: number, seed: number): boolean {
  if (percent >= 100) return true;
  const position = (Number.parseInt(id.slice(0, 8), 16) - seed + SEED_RANGE) % SEED_RANGE;
  return position < (percent / 100) * SEED_RANGE;
}

/**
 * Re-reads every chunk the selected versions use and checks its SHA-256 (and every manifest
 * against its digest). Each chunk is read once per run however many versions share it; each
 * damaged block is reported with its disk, version and index.
 */
export async function verifyRepository(
  repo: Repository,
  req: VerifyRequest,
  options: { concurrency?: number; onProgress?: ProgressListener | undefined } = {},
): Promise<VerifyReport> {
  const started = Date.now();
  const sample = req.sample === undefined ? undefined : { percent: req.sample.percent, seed: req.sample.seed ?? sampleSeedForDay(req.sample.percent) };
  if (sample && !(sample.percent > 0 && sample.percent <= 100)) throw new BlockrepError('USAGE', `a sample is more than 0 and at most 100 percent, not ${sample.percent}`);
  if (sample && !(Number.isSafeInteger(sample.seed) && sample.seed >= 0 && sample.seed < SEED_RANGE)) {
    throw new BlockrepError('USAGE', `a sample seed is a whole number from 0 to ${SEED_RANGE - 1}`);
  }
  const disks = req.diskId !== undefined ? [assertDiskId(req.diskId)] : await repo.listDisks();
  if (req.diskId !== undefined && (await repo.listVersions(req.diskId)).length === 0) {
    throw new BlockrepError('DISK_NOT_FOUND', `disk ${req.diskId} has no versions in ${repo.location}`);
  }
  // id → problem (undefined = good). Bounded by the number of distinct chunks in the selection.
  const checked = new Map<string, { code: string; problem: string } | undefined>();
  const report: VerifyReport = { ok: true, scope: 'content', disks: disks.length, versions: 0, chunksChecked: 0, bytesChecked: 0, damage: [], damageNotListed: 0, durationMs: 0 };
  if (sample) report.sample = sample;
  const addDamage = (d: Damage): void => {
    report.ok = false;
    if (report.damage.length < MAX_LISTED_DAMAGE) report.damage.push(d);
    else report.damageNotListed++;
  };

  for (const disk of disks) {
    const versions = req.version !== undefined ? [await repo.resolveVersion(disk, req.version)] : await repo.listVersions(disk);
    for (const version of versions) {
      report.versions++;
      let manifest;
      try {
        manifest = await repo.openManifest(disk, version);
      } catch (err) {
        if (!isBlockrepError(err)) throw err;
        addDamage({ disk, version, code: err.code, problem: err.message });
        continue;
      }
      const pool = new TaskPool(options.concurrency ?? 8);
      const pendingChecks = new Set<string>();
      // Blocks whose chunk is bad or still being checked; pruned after every batch.
      let blockDamage: Array<{ block: number; id: string }> = [];
      for await (const entries of manifest.batches(4096)) {
        for (let i = 0; i < entries.hashes.length; i++) {
          if (isZeroId(entries.ids, i)) continue;
          const id = idHex(entries.ids, i);
          if (sample && !inSample(id, sample.percent, sample.seed)) continue;
          const block = entries.startBlock + i;
          if (checked.has(id)) {
            if (checked.get(id)) blockDamage.push({ block, id });
            continue;
          }
          if (pendingChecks.has(id)) {
            blockDamage.push({ block, id }); // resolved against `checked` below
            continue;
          }
          pendingChecks.add(id);
          blockDamage.push({ block, id });
          await pool.submit(async () => {
            try {
              const blob = await repo.readChunkBlob(id);
              report.bytesChecked += blob.length;
              repo.decodeChunkBlob(blob, id, manifest.header.blockSize); // never decodes past one block; opened with the key if encrypted
              checked.set(id, undefined);
            } catch (err) {
              if (!isBlockrepError(err)) throw err;
              checked.set(id, { code: err.code, problem: err.message });
            } finally {
              report.chunksChecked++;
              pendingChecks.delete(id);
            }
          });
        }
        blockDamage = blockDamage.filter(({ id }) => pendingChecks.has(id) || checked.get(id) !== undefined);
        options.onProgress?.({ kind: 'verify', disk, version, blocksDone: entries.startBlock + entries.hashes.length, blocks: manifest.header.blockCount, blockSize: manifest.header.blockSize });
      }
      await pool.drain();
      for (const { block, id } of blockDamage) {
        const bad = checked.get(id);
        if (bad) addDamage({ disk, version, block, chunk: id, code: bad.code, problem: bad.problem });
      }
    }
  }
  report.durationMs = Date.now() - started;
  return report;
}
