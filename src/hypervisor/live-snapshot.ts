import { stat, unlink } from 'node:fs/promises';
import { z } from 'zod';
import { BlockrepError, isBlockrepError } from '../shared/index.js';
import { commitOverlay, type CommitTarget } from './block-commit.js';
import type { GuestAgentClient } from './guest-agent-client.js';
import { isOverlayFile, isOverlayNode, overlayFileFor, overlayNodeFor } from './overlay-names.js';
import type { QmpClient } from './qmp-client.js';
import { listNamedNodes, queryBlockSchema, type VmDisk } from './vm-disks.js';

/**
 * The consistent point of a live backup: freeze the guest's filesystems, switch every disk to a
 * new overlay in one QMP transaction of blockdev-snapshot-sync, thaw, on every path. After it
 * the old images (the bases) are read-only and consistent; the guest writes to the overlays.
 * A snapshot that fails leaves the VM on its original images and removes the overlay files
 * QEMU had already created.
 */

export interface OverlayTarget extends CommitTarget {
  disk: VmDisk;
  baseFormat: 'raw' | 'qcow2';
}

export type SnapshotPhase = 'frozen';

export interface LiveSnapshotOptions {
  /** Called while the guest is frozen, before the snapshot (tests interrupt here). */
  onFrozen?: () => void | Promise<void>;
  signal?: AbortSignal;
  freezeTimeoutMs?: number;
  thawTimeoutMs?: number;
  transactionTimeoutMs?: number;
  /** The command that recovers this VM, quoted in messages. */
  recoveryStep: string;
  /** More actions for the same transaction (the bitmaps of changed-block tracking, on base nodes). */
  extraActions?: Array<{ type: string; data: Record<string, unknown> }>;
}

export interface LiveSnapshot {
  targets: OverlayTarget[];
  /** When the overlays became active (ms since the epoch). */
  snapshotAt: number;
  /** Freeze sent → thaw returned; undefined when the guest was not frozen. */
  frozenMs: number | undefined;
  /** Filesystems the agent froze (0: none freezable). */
  frozenFilesystems: number | undefined;
  freezeMs: number | undefined;
  transactionMs: number;
  thawMs: number | undefined;
  /** Set when the guest could not be thawed (it may still be frozen). The overlays are active. */
  thawError: BlockrepError | undefined;
  warnings: string[];
}

/** Plans an overlay next to each disk's active image; refuses disks whose base cannot take one. */
export function planOverlays(disks: VmDisk[]): OverlayTarget[] {
  return disks.map((disk) => {
    if (disk.format === undefined) {
      throw new BlockrepError('IMAGE_UNSUPPORTED', `disk ${disk.id}: its active layer uses the QEMU driver "${disk.driver}", which blockrep cannot read (only raw and qcow2)`);
    }
    if (!disk.file.startsWith('/') || disk.file.startsWith('/dev/') || disk.driver === 'host_device') {
      throw new BlockrepError(
        'IMAGE_UNSUPPORTED',
        `disk ${disk.id}: its image ${disk.file} is not a file in a folder, and blockrep puts the overlay next to its base; live backup of block devices and of images given as json: or URLs is not supported`,
      );
    }
    if (isOverlayFile(disk.file) || isOverlayNode(disk.node)) {
      throw new BlockrepError('RECOVERY_NEEDED', `disk ${disk.id} runs on a blockrep overlay left by an earlier run (${disk.file})`);
    }
    const overlayNode = overlayNodeFor(disk.node);
    return { disk, label: disk.id, baseNode: disk.node, baseFile: disk.file, baseFormat: disk.format, overlayFile: overlayFileFor(disk.file), overlayNode };
  });
}

/** The blockdev-snapshot-sync action of one target (-drive disks by device, -blockdev disks by node). */
function snapshotAction(t: OverlayTarget): Record<string, unknown> {
  return {
    type: 'blockdev-snapshot-sync',
    data: {
      ...(t.disk.device !== undefined ? { device: t.disk.device } : { 'node-name': t.baseNode }),
      'snapshot-file': t.overlayFile,
      'snapshot-node-name': t.overlayNode,
      format: 'qcow2',
    },
  };
}

export async function takeLiveSnapshot(qmp: QmpClient, agent: GuestAgentClient | undefined, targets: OverlayTarget[], options: LiveSnapshotOptions): Promise<LiveSnapshot> {
  const warnings: string[] = [];
  if (options.signal?.aborted) throw new BlockrepError('INTERRUPTED', 'interrupted before the snapshot');
  await removeUnusedOverlayFiles(qmp, targets);
  const transaction = { actions: [...targets.map(snapshotAction), ...(options.extraActions ?? [])] };

  let freezeSentAt: number | undefined;
  let freezeMs: number | undefined;
  let frozenFilesystems: number | undefined;
  let freezeError: unknown;
  let transactionError: unknown;
  let transactionMs = 0;
  let snapshotAt = 0;
  let thawMs: number | undefined;
  let frozenMs: number | undefined;
  let thawError: BlockrepError | undefined;
  let skipped: BlockrepError | undefined;
  try {
    if (agent) {
      freezeSentAt = Date.now();
      try {
        frozenFilesystems = await agent.freeze(options.freezeTimeoutMs);
        freezeMs = Date.now() - freezeSentAt;
      } catch (err) {
        freezeError = err;
      }
      if (freezeError === undefined) await options.onFrozen?.();
    }
    if (freezeError === undefined) {
      if (options.signal?.aborted) {
        skipped = new BlockrepError('INTERRUPTED', 'interrupted before the snapshot; the guest was thawed and nothing was changed');
      } else {
        const t = Date.now();
        try {
          await qmp.execute('transaction', transaction, z.unknown(), { timeoutMs: options.transactionTimeoutMs ?? 30_000 });
        } catch (err) {
          transactionError = err;
        }
        snapshotAt = Date.now();
        transactionMs = snapshotAt - t;
      }
    }
  } finally {
    if (freezeSentAt !== undefined) {
      const t = Date.now();
      try {
        await thawGuest(agent!, options.thawTimeoutMs);
      } catch (err) {
        thawError = new BlockrepError(
          'THAW_FAILED',
          `the guest could not be thawed (${err instanceof Error ? err.message : String(err)}); it may still be frozen. Run: ${options.recoveryStep}`,
          { cause: err, details: { recovery: options.recoveryStep } },
        );
      }
      thawMs = Date.now() - t;
      frozenMs = Date.now() - freezeSentAt;
    }
  }

  if (freezeError !== undefined) {
    if (thawError) throw thawError;
    const why = freezeError instanceof Error ? freezeError.message : String(freezeError);
    throw new BlockrepError('FREEZE_FAILED', `the guest's filesystems could not be frozen (${why}); the guest was thawed and no snapshot was taken`, { cause: freezeError });
  }
  if (skipped) {
    if (thawError) throw thawError;
    throw skipped;
  }
  if (frozenFilesystems === 0) warnings.push('the guest agent froze no filesystem (none is freezable): the snapshot is crash-consistent only');

  if (transactionError !== undefined) {
    // The transaction is all or nothing, but a timeout leaves its outcome unknown: look.
    const active = await activeOverlays(qmp, targets);
    if (active.length === targets.length) {
      warnings.push(`the snapshot transaction reported an error but every disk runs on its overlay: ${messageOf(transactionError)}`);
    } else {
      const undo: string[] = [];
      for (const t of active) {
        try {
          await commitOverlay(qmp, t, options.recoveryStep);
        } catch (err) {
          undo.push(messageOf(err));
        }
      }
      const removed = await removeUnusedOverlayFiles(qmp, targets);
      const why = messageOf(transactionError);
      if (undo.length > 0) {
        throw new BlockrepError('COMMIT_FAILED', `the snapshot failed (${why}) and undoing it failed: ${undo.join('; ')}`, { cause: transactionError });
      }
      if (thawError) throw thawError;
      throw new BlockrepError(
        'SNAPSHOT_FAILED',
        `the snapshot failed: ${why}. The VM runs on its original images, unharmed${removed.length > 0 ? `; the overlay files QEMU had created were removed (${removed.join(', ')})` : ''}`,
        { cause: transactionError, details: { removed } },
      );
    }
  }
  return { targets, snapshotAt, frozenMs, frozenFilesystems, freezeMs, transactionMs, thawMs, thawError, warnings };
}

/** Thaws, retrying (the agent client resyncs after a timeout). */
export async function thawGuest(agent: GuestAgentClient, timeoutMs?: number, attempts = 3): Promise<number> {
  let last: unknown;
  for (let i = 0; i < attempts; i++) {
    try {
      return await agent.thaw(timeoutMs);
    } catch (err) {
      last = err;
      // A refused thaw is final only if the guest says it is thawed.
      if (isBlockrepError(err) && err.code === 'AGENT_ERROR' && err.details?.timeout !== true) {
        try {
          if ((await agent.status()) === 'thawed') return 0;
        } catch {
          // retry the thaw
        }
      }
    }
  }
  throw last;
}

async function activeOverlays(qmp: QmpClient, targets: OverlayTarget[]): Promise<OverlayTarget[]> {
  const blocks = await qmp.execute('query-block', undefined, queryBlockSchema);
  const active = new Set(blocks.map((b) => b.inserted?.['node-name']).filter((n): n is string => n !== undefined));
  return targets.filter((t) => active.has(t.overlayNode));
}

/** Deletes the targets' overlay files that exist and that no node of the VM has open. */
export async function removeUnusedOverlayFiles(qmp: QmpClient, targets: Array<{ overlayFile: string }>): Promise<string[]> {
  const inUse = new Set((await listNamedNodes(qmp)).map((n) => n.file));
  const removed: string[] = [];
  for (const { overlayFile } of targets) {
    if (!isOverlayFile(overlayFile) || inUse.has(overlayFile)) continue;
    try {
      await stat(overlayFile);
    } catch {
      continue;
    }
    await unlink(overlayFile);
    removed.push(overlayFile);
  }
  return removed;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
