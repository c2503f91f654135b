import { open } from 'node:fs/promises';
import {
  addBitmapAction,
  bitmapChainId,
  bitmapName,
  listDirtyBitmaps,
  mergeBitmapsAction,
  parseBitmapName,
  readCopyName,
  removeBitmapAction,
  runBitmapTransaction,
  startNbdExport,
  type BitmapAction,
  type DirtyBitmap,
  type QmpClient,
} from '../hypervisor/index.js';
import { readDirtyExtents } from '../nbd/index.js';
import type { Repository } from '../repository/index.js';
import type { TrackedRead } from './backup-image.js';
import { decideScan, latestVersionFacts, type DirtyExtent, type LatestVersionFacts, type ScanDecision, type ScanPolicy, type TrackerState } from './scan-plan.js';

/**
 * Changed-block tracking of the QMP live path: one chain of dirty bitmaps per disk and
 * repository on the disk's base node. The reference R (the generation the latest published
 * version recorded) records since that version; the snapshot's own transaction adds the next
 * generation N and a disabled read copy of R; the copy's dirty map is read over QEMU's NBD
 * server; after the publish R and the copy go (N is the reference), after a failure N and the
 * copy go (R, a superset, stays), after a tracking mismatch all of them go.
 */

export interface BitmapChainPlan {
  diskId: string;
  node: string;
  chain: string;
  latest: LatestVersionFacts | undefined;
  decision: ScanDecision;
  /** The reference kept from the latest version (a usable one), if any. */
  reference: string | undefined;
  next: string;
  /** The read copy of the reference, for a bitmap decision. */
  copy: string | undefined;
  granularity: number;
  persistent: boolean;
  /** Actions for the snapshot transaction. */
  actions: BitmapAction[];
  /** Leftovers of this chain removed before the snapshot (killed runs, an unusable reference). */
  removedAtStart: string[];
}

/**
 * The granularity of a new generation: one bit per block. Any granularity that divides the
 * block size makes a run read exactly the same blocks (a block is read when any of its bytes is
 * dirty), so the coarsest one is best: the smallest bitmap (1 TiB at 256 KiB: 512 KiB) and the
 * fewest extents to fetch over NBD (bench/results/cbt.md).
 */
export function granularityFor(blockSize: number): number {
  return blockSize;
}

/** Whether a qcow2 base can hold persistent bitmaps (v3); raw and v2 bases get transient ones. */
export async function canPersistBitmaps(baseFile: string, format: 'raw' | 'qcow2'): Promise<boolean> {
  if (format !== 'qcow2') return false;
  const fh = await open(baseFile, 'r');
  try {
    const header = Buffer.alloc(8);
    const { bytesRead } = await fh.read(header, 0, 8, 0);
    return bytesRead === 8 && header.readUInt32BE(0) === 0x514649fb && header.readUInt32BE(4) >= 3;
  } finally {
    await fh.close();
  }
}

/**
 * Before the snapshot, with the repository known: cleans the chain (keeps only the latest
 * version's reference, when usable), decides whether this run may read only the dirty blocks,
 * and prepares the bitmap actions of the snapshot transaction.
 */
export async function planBitmapChain(
  qmp: QmpClient,
  repo: Repository,
  disk: { diskId: string; node: string; baseFile: string; format: 'raw' | 'qcow2'; blockSize: number | undefined },
  policy: ScanPolicy,
  defaultBlockSize: number,
): Promise<BitmapChainPlan> {
  const chain = bitmapChainId(repo.config.id, disk.diskId);
  const latest = await latestVersionFacts(repo, disk.diskId);
  const blockSize = disk.blockSize ?? latest?.blockSize ?? defaultBlockSize;
  const ours = (await listDirtyBitmaps(qmp, disk.node)).flatMap((b) => {
    const parsed = parseBitmapName(b.name);
    return parsed && parsed.chain === chain ? [{ bitmap: b, ...parsed }] : [];
  });
  const t = latest?.tracking;
  const refName = t && t.method === 'qemu-bitmap' && t.chain === chain ? t.point : undefined;
  const ref = ours.find((b) => b.bitmap.name === refName && b.readCopy === undefined)?.bitmap;
  const problem = ref === undefined ? undefined : referenceProblem(ref, blockSize);
  const tracker: TrackerState = { method: 'qemu-bitmap', chain, point: ref?.name, granularity: ref?.granularity, problem };
  const decision = decideScan(latest, tracker, policy);

  const usable = ref !== undefined && problem === undefined ? ref : undefined;
  const removedAtStart = ours.filter((b) => b.bitmap !== usable).map((b) => b.bitmap.name);
  if (removedAtStart.length > 0) await runBitmapTransaction(qmp, removedAtStart.map((name) => removeBitmapAction({ node: disk.node, name })));

  const refGeneration = refName !== undefined ? (parseBitmapName(refName)?.generation ?? 0) : 0;
  const generation = Math.max(refGeneration, ...ours.map((b) => b.generation)) + 1;
  const next = bitmapName(chain, generation);
  const granularity = granularityFor(blockSize);
  const persistent = await canPersistBitmaps(disk.baseFile, disk.format);
  const actions: BitmapAction[] = [addBitmapAction({ node: disk.node, name: next }, { persistent, granularity })];
  let copy: string | undefined;
  if (decision.scan === 'bitmap' && usable) {
    copy = readCopyName(chain, refGeneration);
    actions.push(addBitmapAction({ node: disk.node, name: copy }, { persistent: false, granularity: usable.granularity, disabled: true }));
    actions.push(mergeBitmapsAction(disk.node, copy, [usable.name]));
  }
  return { diskId: disk.diskId, node: disk.node, chain, latest, decision, reference: usable?.name, next, copy, granularity, persistent, actions, removedAtStart };
}

/** Why a reference that exists cannot be trusted, if it cannot. */
function referenceProblem(ref: DirtyBitmap, blockSize: number): TrackerState['problem'] {
  if (ref.inconsistent === true) return 'bitmap-inconsistent';
  if (!ref.recording || ref.busy) return 'bitmap-unusable';
  if (ref.granularity > blockSize || blockSize % ref.granularity !== 0) return 'granularity-changed';
  return undefined;
}

/**
 * Exports the base node with the read copy on blockrep's own NBD socket, reads the copy's dirty
 * extents (merged runs, ascending) and removes the export again: always, before anything else
 * happens to the base (its commit). `onExported` runs while the export exists (tests hold there).
 */
export async function readChainDirtyExtents(qmp: QmpClient, plan: BitmapChainPlan, socketPath: string, onExported?: () => void | Promise<void>): Promise<DirtyExtent[]> {
  if (plan.copy === undefined) throw new Error('no read copy to export');
  const name = `b${plan.chain}`;
  const exp = await startNbdExport(qmp, { socketPath, node: plan.node, name, bitmaps: [plan.copy] });
  try {
    await onExported?.();
    return await readDirtyExtents({ kind: 'unix', path: socketPath }, name, plan.copy);
  } finally {
    await exp.close();
  }
}

/** What backupImage gets: the decision, the dirty extents of a bitmap read, and what the version records. */
export function trackedReadOf(plan: BitmapChainPlan, decision: ScanDecision, dirty: DirtyExtent[] | undefined, nextExists: boolean): TrackedRead {
  return {
    basedOn: plan.latest?.versionId,
    decision,
    ...(dirty ? { dirty } : {}),
    record: nextExists ? { method: 'qemu-bitmap', chain: plan.chain, point: plan.next, granularity: plan.granularity, persistent: plan.persistent } : undefined,
  };
}

export type ChainOutcome = 'published' | 'failed' | 'mismatch';

/**
 * After a disk's run: published → the reference and the copy go (the next generation is the
 * reference now); failed → the next generation and the copy go (the reference stays: a
 * superset); mismatch → the whole chain goes (the next run reads everything). Returns the names
 * removed; bitmaps already gone are skipped.
 */
export async function finishBitmapChain(qmp: QmpClient, plan: BitmapChainPlan, outcome: ChainOutcome): Promise<string[]> {
  const drop = new Set<string>();
  if (plan.copy) drop.add(plan.copy);
  if (outcome !== 'failed' && plan.reference) drop.add(plan.reference);
  if (outcome !== 'published') drop.add(plan.next);
  const present = new Set((await listDirtyBitmaps(qmp, plan.node)).map((b) => b.name));
  const names = [...drop].filter((n) => present.has(n));
  await runBitmapTransaction(
    qmp,
    names.map((name) => removeBitmapAction({ node: plan.node, name })),
  );
  return names;
}
