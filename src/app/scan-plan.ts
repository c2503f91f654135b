import { randomInt } from 'node:crypto';
import type { ManifestHeader, TrackingFacts } from '../manifest/index.js';
import type { Repository } from '../repository/index.js';
import type { BlockRange } from '../scan/index.js';

/**
 * Changed-block tracking, the part every hypervisor path shares: whether a tracker may be
 * trusted for this run (never wrong: only when it counts writes since exactly the disk's latest
 * version in this repository), and which blocks its dirty extents name. Reading, comparing and
 * publishing stay in backupImage.
 */

/** Why a live disk was read in full; stable strings (they are in `backup --json`). */
export const scanReasons = [
  /** The repository has no version of this disk. */
  'first-backup',
  /** The latest version came from an offline image backup: nothing tracked the writes since. */
  'offline-parent',
  /** The latest version was taken without tracking (a raw disk, an older blockrep, a tracker that could not start). */
  'untracked-parent',
  /** The tracker counts since another point than the latest version (that version was pruned, another method or repository ran). */
  'chain-changed',
  /** The bitmap of the latest version is gone (deleted, or a new QEMU started without it). */
  'bitmap-missing',
  /** The latest version's bitmap lived only in QEMU's memory (raw base) and QEMU was restarted. */
  'qemu-restarted',
  /** QEMU marked the bitmap inconsistent: it was not closed cleanly (QEMU crashed or was killed). */
  'bitmap-inconsistent',
  /** The bitmap exists but cannot be used: it does not record (disabled by someone), is busy, or its dirty map could not be read (a warning says why). */
  'bitmap-unusable',
  /** The bitmap's granularity is not the one the latest version recorded. */
  'granularity-changed',
  /** libvirt has no checkpoint for the latest version (deleted, or the domain was redefined or migrated). */
  'checkpoint-missing',
  /** Block size or disk size differ from the latest version. */
  'disk-resized',
  /** Another run published a version of this disk after the tracker was read. */
  'latest-changed',
  /** `--full-scan` or `fullScan: true`. */
  'full-scan-requested',
  /** The chain's last full read is older than `fullScanEvery`. */
  'full-scan-due',
  /** This disk cannot be tracked by this method (a raw disk under libvirt's backup API). */
  'not-trackable',
] as const;

export type ScanReason = (typeof scanReasons)[number];

/** What the run knows of a disk's latest version before it touches the VM. */
export interface LatestVersionFacts {
  versionId: string;
  blockSize: number;
  imageBytes: number;
  sourceKind: 'image' | 'live';
  tracking: TrackingFacts | undefined;
}

export async function latestVersionFacts(repo: Repository, diskId: string): Promise<LatestVersionFacts | undefined> {
  const versionId = await repo.latestVersion(diskId);
  if (versionId === undefined) return undefined;
  return factsOf(await repo.versionHeader(diskId, versionId));
}

export function factsOf(header: ManifestHeader): LatestVersionFacts {
  return {
    versionId: header.meta.versionId,
    blockSize: header.blockSize,
    imageBytes: header.imageBytes,
    sourceKind: header.meta.source.kind,
    tracking: header.meta.tracking,
  };
}

/** A tracker as the hypervisor shows it now: what it would record, or why it cannot be used. */
export interface TrackerState {
  method: TrackingFacts['method'];
  chain: string;
  /** The point (bitmap, checkpoint) whose writes the run would read: must be the latest version's. */
  point: string | undefined;
  granularity?: number | undefined;
  /** A reason the hypervisor gives against using it (missing, inconsistent...). */
  problem?: ScanReason | undefined;
}

export interface ScanPolicy {
  fullScan?: boolean | undefined;
  /** A full read at least this often (ms); 0 or omitted: never forced by age. */
  fullScanEveryMs?: number | undefined;
  nowMs: number;
}

export type ScanDecision = { scan: 'bitmap' } | { scan: 'full'; reason: ScanReason };

/** Never wrong: a tracker is used only when it provably covers every write since the latest version. */
export function decideScan(latest: LatestVersionFacts | undefined, tracker: TrackerState, policy: ScanPolicy): ScanDecision {
  const full = (reason: ScanReason): ScanDecision => ({ scan: 'full', reason });
  if (policy.fullScan) return full('full-scan-requested');
  if (latest === undefined) return full('first-backup');
  if (latest.sourceKind === 'image') return full('offline-parent');
  const t = latest.tracking;
  if (t === undefined) return full('untracked-parent');
  if (t.method !== tracker.method || t.chain !== tracker.chain) return full('chain-changed');
  if (tracker.problem !== undefined) return full(tracker.problem);
  if (tracker.point === undefined) return full(t.persistent === false ? 'qemu-restarted' : tracker.method === 'qemu-bitmap' ? 'bitmap-missing' : 'checkpoint-missing');
  if (tracker.point !== t.point) return full('chain-changed');
  if (t.granularity !== undefined && tracker.granularity !== undefined && t.granularity !== tracker.granularity) return full('granularity-changed');
  if (policy.fullScanEveryMs !== undefined && policy.fullScanEveryMs > 0 && policy.nowMs - t.fullScanMs >= policy.fullScanEveryMs) return full('full-scan-due');
  return { scan: 'bitmap' };
}

/** Default for `fullScanEvery`: a full read a week bounds what a tracking bug could miss. */
export const DEFAULT_FULL_SCAN_EVERY_MS = 7 * 24 * 3600 * 1000;

/** A byte range a tracker calls dirty. */
export interface DirtyExtent {
  offset: number;
  length: number;
}

/** The blocks that hold any dirty byte, as ascending, merged ranges (extents must be ascending). */
export function dirtyBlockRanges(extents: Iterable<DirtyExtent>, blockSize: number, blockCount: number): BlockRange[] {
  const ranges: BlockRange[] = [];
  for (const e of extents) {
    if (e.length <= 0) continue;
    const first = Math.floor(e.offset / blockSize);
    const end = Math.min(blockCount, Math.ceil((e.offset + e.length) / blockSize));
    if (first >= end) continue;
    const last = ranges[ranges.length - 1];
    if (last && first < last.start) throw new Error(`dirty extents out of order at byte ${e.offset}`);
    if (last && first <= last.start + last.count) last.count = Math.max(last.count, end - last.start);
    else ranges.push({ start: first, count: end - first });
  }
  return ranges;
}

/**
 * How many clean blocks each run re-reads to check the tracker: 1 in 1000, at least 8, at most
 * 256 (64 MiB at 256 KiB blocks), so a nightly run of a large disk stays small.
 */
export function sampleSize(cleanBlocks: number): number {
  return Math.min(cleanBlocks, Math.max(8, Math.min(256, Math.ceil(cleanBlocks / 1000))));
}

/** `count` distinct random blocks from outside `dirty` (ascending), as single-block ranges. */
export function sampleCleanBlocks(dirty: readonly BlockRange[], blockCount: number, count: number): BlockRange[] {
  const dirtyBlocks = dirty.reduce((n, r) => n + r.count, 0);
  const clean = blockCount - dirtyBlocks;
  const want = Math.min(count, clean);
  const picks = new Set<number>();
  while (picks.size < want) picks.add(randomInt(clean));
  const ordinals = [...picks].sort((a, b) => a - b);
  // Walk the gaps between dirty ranges, mapping the n-th clean block to its block number.
  const out: BlockRange[] = [];
  let next = 0;
  let cleanBefore = 0; // clean blocks before `gapStart`
  let gapStart = 0;
  for (let i = 0; i <= dirty.length && next < ordinals.length; i++) {
    const gapEnd = i < dirty.length ? dirty[i]!.start : blockCount;
    const gapLength = gapEnd - gapStart;
    while (next < ordinals.length && ordinals[next]! < cleanBefore + gapLength) {
      out.push({ start: gapStart + (ordinals[next]! - cleanBefore), count: 1 });
      next++;
    }
    cleanBefore += gapLength;
    if (i < dirty.length) gapStart = dirty[i]!.start + dirty[i]!.count;
  }
  return out;
}

/** The union of two ascending range lists, ascending and merged. */
export function mergeRanges(a: readonly BlockRange[], b: readonly BlockRange[]): BlockRange[] {
  const all = [...a, ...b].sort((x, y) => x.start - y.start);
  const out: BlockRange[] = [];
  for (const r of all) {
    const last = out[out.length - 1];
    if (last && r.start <= last.start + last.count) last.count = Math.max(last.count, r.start + r.count - last.start);
    else out.push({ ...r });
  }
  return out;
}
