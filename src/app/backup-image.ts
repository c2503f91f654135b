import { openImage, type ImageFormat, type ImageSpec } from '../image/index.js';
import { ManifestWriter, blockCountFor, idHex, isZeroId, ZERO_CHUNK_ID, type ManifestEntries, type ManifestReader, type TrackingFacts } from '../manifest/index.js';
import type { Repository } from '../repository/index.js';
import { scanImage, type BlockRange } from '../scan/index.js';
import { BlockrepError, checkBlockSize, assertDiskId, TaskPool, newVersionId } from '../shared/index.js';
import { ChunkUploader, type UploadTotals } from './chunk-uploader.js';
import type { ProgressListener } from './progress.js';
import { dirtyBlockRanges, mergeRanges, sampleCleanBlocks, sampleSize, type DirtyExtent, type ScanDecision, type ScanReason } from './scan-plan.js';

export interface BackupImageRequest {
  path: string;
  format?: ImageFormat;
  diskId: string;
  /** Omitted: the block size of the disk's latest version, or DEFAULT_BLOCK_SIZE for a new disk. */
  blockSize?: number;
  source?: { kind: 'image' | 'live'; vm?: string };
  /** Read the disk from this NBD export (a live disk's point-in-time view); `path` and `format` are then recorded only. */
  nbd?: ImageSpec['nbd'];
  /** Changed-block tracking of a live disk; omitted: every block is read. */
  tracked?: TrackedRead;
}

/** What a tracker lets this run skip, decided (decideScan) before the VM was touched. */
export interface TrackedRead {
  /** The latest version the decision was made against; undefined: there was none. */
  basedOn: string | undefined;
  decision: ScanDecision;
  /** For a 'bitmap' decision: the byte ranges the tracker calls dirty, ascending. */
  dirty?: Iterable<DirtyExtent>;
  /** What the new version records for the next run; undefined: not tracked (the next run reads everything). */
  record: Omit<TrackingFacts, 'fullScanMs'> | undefined;
  /** Clean blocks to re-read and compare with the latest version; default sampleSize(). */
  sampleBlocks?: number;
}

export interface DiskBackupReport {
  disk: string;
  version: string;
  parentVersion: string | null;
  imageBytes: number;
  blockSize: number;
  blocks: number;
  changedBlocks: number;
  zeroBlocks: number;
  /** Bytes read from the image (regions known to be zero are not read). */
  bytesRead: number;
  /** Every byte written to (or, remote, sent to) the repository for this disk. */
  bytesSent: number;
  /** New chunks stored, and chunks the repository already held. */
  newChunks: number;
  reusedChunks: number;
  /** New chunks that travelled as patches against the block's previous chunk (remote only). */
  patchedChunks: number;
  durationMs: number;
  /** full: every block was read; bitmap: only those a tracker called dirty, and a sample of the others. */
  scan: 'full' | 'bitmap';
  /** Why a tracked (live) disk was read in full. */
  scanReason?: ScanReason;
  /** Bitmap scans: clean blocks re-read to check the tracker (all matched, or the run failed). */
  sampledBlocks?: number;
}

export interface BackupImageOptions {
  workers?: number;
  compress?: boolean;
  signal?: AbortSignal;
  onProgress?: ProgressListener | undefined;
  /** Chunk writes in flight at once. */
  writeConcurrency?: number;
  /** Something the user should know that does not stop the backup (the caller prints it). */
  onWarning?: ((message: string) => void) | undefined;
}

/**
 * Backs up one disk image into the repository as a new version: scans it against the latest
 * version's block hashes, stores the chunks of changed blocks the repository does not hold,
 * then publishes the manifest last. Any failure leaves no version behind (chunks already
 * stored stay, so a retry does not send them again).
 */
export async function backupImage(repo: Repository, req: BackupImageRequest, options: BackupImageOptions = {}): Promise<DiskBackupReport> {
  const started = Date.now();
  const diskId = assertDiskId(req.diskId);
  if (req.blockSize !== undefined) checkBlockSize(req.blockSize);

  const spec: ImageSpec = { path: req.path, ...(req.format ? { format: req.format } : {}), ...(req.nbd ? { nbd: req.nbd } : {}) };
  const probe = await openImage(spec);
  const imageBytes = probe.virtualSize;
  const format = req.nbd && req.format ? req.format : probe.format;
  await probe.close();
  // A name that says qcow2 over content that is not: a damaged header, or a misnamed raw image.
  // Backed up as what it is (raw), but said, so that nobody restores a surprise.
  if (req.format === undefined && req.nbd === undefined && format === 'raw' && /\.qcow2$/i.test(req.path)) {
    options.onWarning?.(`${req.path} is named .qcow2 but has no qcow2 header: backed up as a raw image (give --format raw, or format: raw in a job, if that is what it is)`);
  }

  const lock = await repo.lockDisk(diskId, 'backup');
  let parent: ManifestReader | undefined;
  let writer: ManifestWriter | undefined;
  // Over a link, more uploads in flight cover the round trip each one waits for its answer.
  const pool = new TaskPool(options.writeConcurrency ?? (repo.backend.remote ? REMOTE_WRITE_CONCURRENCY : LOCAL_WRITE_CONCURRENCY));
  let uploader: ChunkUploader | undefined;
  try {
    const parentVersion = await repo.latestVersion(diskId);
    let blockSize = req.blockSize ?? (repo.encrypted ? DEFAULT_ENCRYPTED_BLOCK_SIZE : DEFAULT_BLOCK_SIZE);
    if (parentVersion !== undefined) {
      const candidate = await repo.openManifest(diskId, parentVersion);
      // Keep the disk's block size unless told otherwise, so versions stay comparable.
      if (req.blockSize === undefined) blockSize = candidate.header.blockSize;
      // A parent of another block or image size is not compared block by block (all blocks
      // count as changed); chunks the repository holds are still not stored again.
      if (candidate.header.blockSize === blockSize && candidate.header.imageBytes === imageBytes) parent = candidate;
    }
    const versionId = newVersionId(Date.now(), parentVersion);
    const plan = planTrackedRead(req.tracked, parentVersion, parent, blockCountFor(imageBytes, blockSize), blockSize);
    writer = await ManifestWriter.create({
      blockSize: blockSize,
      imageBytes,
      createdMs: Date.now(),
      meta: {
        diskId,
        versionId,
        parentVersionId: parentVersion ?? null,
        source: { kind: req.source?.kind ?? 'image', path: req.path, format, ...(req.source?.vm ? { vm: req.source.vm } : {}) },
        ...(req.tracked ? { scan: plan.scan } : {}),
        ...(req.tracked?.record ? { tracking: { ...req.tracked.record, fullScanMs: plan.scan === 'full' ? started : parent!.header.meta.tracking!.fullScanMs } } : {}),
      },
    });

    const parentEntries = new ParentEntries(parent);
    const totals = { changedBlocks: 0, zeroBlocks: 0, bytesRead: 0, blocksDone: 0 };
    const uploads: UploadTotals = { bytesSent: 0, storedBytes: 0, newChunks: 0, reusedChunks: 0, patchedChunks: 0 };
    uploader = new ChunkUploader(repo, pool, uploads);
    const blocks = writer.blockCount;

    const scan = scanImage({
      image: req.nbd ? spec : { path: req.path, format },
      blockSize,
      ...(options.workers !== undefined ? { workers: options.workers } : {}),
      ...(options.compress !== undefined ? { compress: options.compress } : {}),
      keys: repo.chunkKeys(),
      ...(options.signal ? { signal: options.signal } : {}),
      ...(parent ? { parentHashes: (start: number, count: number) => parentEntries.hashes(start, count) } : {}),
      ...(plan.scan === 'bitmap' ? { blocks: plan.read } : {}),
    });

    // A bitmap scan reads only some blocks: the others keep the latest version's entries.
    let nextBlock = 0;
    const copyClean = async (until: number): Promise<void> => {
      for (; nextBlock < until; ) {
        const n = Math.min(CLEAN_COPY_BLOCKS, until - nextBlock);
        const e = await parent!.entries(nextBlock, n);
        for (let i = 0; i < n; i++) if (isZeroId(e.ids, i)) totals.zeroBlocks++;
        await writer!.append(e.hashes, e.ids);
        nextBlock += n;
        totals.blocksDone += n;
      }
    };

    for await (const batch of scan) {
      lock.throwIfLost(); // taken over: nothing more to send
      if (plan.scan === 'bitmap') {
        await copyClean(batch.startBlock);
        plan.checkSample(batch);
      }
      const ids = Buffer.alloc(batch.count * 32);
      const prev = parent ? await parentEntries.take(batch.startBlock, batch.count) : undefined;
      for (let i = 0; i < batch.count; i++) {
        if (batch.zero[i]) totals.zeroBlocks++;
        if (batch.changed[i]) totals.changedBlocks++;
        else if (!batch.zero[i] && prev && i < prev.hashes.length) prev.ids.copy(ids, i * 32, i * 32, i * 32 + 32);
      }
      for (const { index, chunk } of batch.chunks) {
        const i = index - batch.startBlock;
        Buffer.from(chunk.id, 'hex').copy(ids, i * 32);
        // The chunk this block had before: what a patch is made against.
        const baseId = prev && i < prev.hashes.length && !isZeroId(prev.ids, i) ? idHex(prev.ids, i) : undefined;
        await uploader.add(chunk, baseId);
      }
      await writer.append(batch.hashes, ids, batch.changed);
      nextBlock = batch.startBlock + batch.count;
      totals.bytesRead += batch.bytesRead;
      totals.blocksDone += batch.count;
      options.onProgress?.({ kind: 'scan', disk: diskId, blocksDone: totals.blocksDone, blocks, blockSize, changedBlocks: totals.changedBlocks, bytesRead: totals.bytesRead, bytesSent: uploads.bytesSent });
    }
    if (plan.scan === 'bitmap') await copyClean(blocks);
    const finishing = uploader.finish();
    finishing.catch(() => undefined); // raced: its failure is reported below, or superseded
    await Promise.race([finishing, lock.whenLost()]);
    if (options.signal?.aborted) throw new BlockrepError('INTERRUPTED', 'backup interrupted before its version was published');

    const manifest = await writer.finish({ changedBlocks: totals.changedBlocks, zeroBlocks: totals.zeroBlocks, storedBytes: uploads.storedBytes });
    // A run whose lock expired and was taken over must not publish beside its successor.
    await lock.assertHeld();
    uploads.bytesSent += await repo.publishVersion(diskId, versionId, manifest);

    return {
      disk: diskId,
      version: versionId,
      parentVersion: parentVersion ?? null,
      imageBytes,
      blockSize: blockSize,
      blocks,
      changedBlocks: totals.changedBlocks,
      zeroBlocks: totals.zeroBlocks,
      bytesRead: totals.bytesRead,
      bytesSent: uploads.bytesSent,
      newChunks: uploads.newChunks,
      reusedChunks: uploads.reusedChunks,
      patchedChunks: uploads.patchedChunks,
      durationMs: Date.now() - started,
      scan: plan.scan,
      ...(plan.scan === 'full' && plan.reason !== undefined ? { scanReason: plan.reason } : {}),
      ...(plan.scan === 'bitmap' ? { sampledBlocks: plan.sampled } : {}),
    };
  } finally {
    await uploader?.settle(); // its questions may still be out when the scan failed
    await pool.settle();
    await writer?.dispose();
    // A lock that cannot be removed (the server went away after the publish) must not turn a
    // published version into a failure: it expires with its lease, or at once for this host.
    await lock.release().catch(() => undefined);
  }
}

/**
 * 256 KiB, by measurement (bench/results/block-size.md): the scan runs as fast at any size from
 * 64 KiB to 4 MiB; below 1 MiB a first backup pays for more chunk files (1.5× the time at
 * 256 KiB, 2.6× at 64 KiB), above it a nightly change of scattered small writes stores far more
 * (2.9× more at 1 MiB than at 256 KiB).
 */
export const DEFAULT_BLOCK_SIZE = 256 * 1024;
/**
 * A new disk of an encrypted repository: changed blocks travel whole (no slice patches), so a
 * smaller block keeps a nightly change's bytes near rsync's (bench/results/crypt.md: 1 % change,
 * 2.12× rsync's literal bytes at 256 KiB, 1.16× at 64 KiB, 1.04× at 16 KiB with 2.7× the blocks).
 */
export const DEFAULT_ENCRYPTED_BLOCK_SIZE = 64 * 1024;
/** Chunk writes in flight: into a folder (the disk's queue) and to a server (round trips to cover). */
const LOCAL_WRITE_CONCURRENCY = 8;
export const REMOTE_WRITE_CONCURRENCY = 16;

/** Clean blocks copied from the latest version per append: 40 bytes each. */
const CLEAN_COPY_BLOCKS = 16384;

type ReadPlan =
  | { scan: 'full'; reason: ScanReason | undefined }
  | { scan: 'bitmap'; read: BlockRange[]; sampled: number; checkSample: (batch: { startBlock: number; count: number; changed: Uint8Array }) => void };

/**
 * Turns a tracker's decision into the blocks to read, once the disk's lock is held and its
 * latest version known: a bitmap read needs that version to be the one the decision was made
 * against, and comparable block by block; else the run reads everything, and says why.
 */
function planTrackedRead(tracked: TrackedRead | undefined, latest: string | undefined, parent: ManifestReader | undefined, blockCount: number, blockSize: number): ReadPlan {
  if (tracked === undefined) return { scan: 'full', reason: undefined };
  const d = tracked.decision;
  if (d.scan === 'full') return { scan: 'full', reason: d.reason };
  if (latest !== tracked.basedOn) return { scan: 'full', reason: 'latest-changed' };
  if (parent === undefined || parent.header.meta.versionId !== latest || parent.header.meta.tracking === undefined) return { scan: 'full', reason: 'disk-resized' };
  if (tracked.dirty === undefined) throw new BlockrepError('INTERNAL', 'a bitmap scan without dirty extents');
  const dirty = dirtyBlockRanges(tracked.dirty, blockSize, blockCount);
  const dirtyCount = dirty.reduce((n, r) => n + r.count, 0);
  const sample = sampleCleanBlocks(dirty, blockCount, tracked.sampleBlocks ?? sampleSize(blockCount - dirtyCount));
  const isSample = new Set(sample.map((r) => r.start));
  return {
    scan: 'bitmap',
    read: mergeRanges(dirty, sample),
    sampled: sample.length,
    checkSample: (batch) => {
      for (let i = 0; i < batch.count; i++) {
        const block = batch.startBlock + i;
        if (batch.changed[i] && isSample.has(block) && !inRanges(dirty, block)) {
          throw new BlockrepError(
            'TRACKING_MISMATCH',
            `block ${block} (bytes ${block * blockSize}+${blockSize}) changed since version ${latest}, but the changed-block tracker called it clean: nothing was published; the tracking chain is dropped and the next run reads the whole disk`,
            { details: { block, version: latest } },
          );
        }
      }
    },
  };
}

function inRanges(ranges: readonly BlockRange[], block: number): boolean {
  let lo = 0;
  let hi = ranges.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const r = ranges[mid]!;
    if (block < r.start) hi = mid - 1;
    else if (block >= r.start + r.count) lo = mid + 1;
    else return true;
  }
  return false;
}

/**
 * The parent manifest's entries, read once per range: the scan asks for the hashes of a
 * segment before the segment is read, the backup loop takes the chunk ids when its results
 * arrive. Ranges are dropped once taken, so memory stays bounded.
 */
class ParentEntries {
  private readonly cache = new Map<number, Promise<ManifestEntries>>();

  constructor(private readonly parent: ManifestReader | undefined) {}

  private load(start: number, count: number): Promise<ManifestEntries> {
    let p = this.cache.get(start);
    if (!p) {
      p = this.parent ? this.parent.entries(start, count) : Promise.resolve({ startBlock: start, hashes: new BigUint64Array(0), ids: ZERO_CHUNK_ID.subarray(0, 0) });
      this.cache.set(start, p);
    }
    return p;
  }

  async hashes(start: number, count: number): Promise<BigUint64Array> {
    return (await this.load(start, count)).hashes;
  }

  /** The entries for a batch; the scan's batches may differ from its requested ranges. */
  async take(start: number, count: number): Promise<ManifestEntries> {
    const cached = this.cache.get(start);
    if (cached) {
      const e = await cached;
      if (e.hashes.length >= count || start + e.hashes.length >= (this.parent?.header.blockCount ?? 0)) {
        this.cache.delete(start);
        return e;
      }
    }
    // Batches and requests not aligned: read the range directly.
    for (const key of this.cache.keys()) if (key < start) this.cache.delete(key);
    return this.parent ? this.parent.entries(start, count) : { startBlock: start, hashes: new BigUint64Array(0), ids: Buffer.alloc(0) };
  }
}
