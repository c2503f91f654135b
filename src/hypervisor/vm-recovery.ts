import { readdir, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { commitOverlay, finishCommitJob, queryJobs } from './block-commit.js';
import { listAllDirtyBitmaps, parseBitmapName, removeBitmapAction, runBitmapTransaction } from './dirty-bitmaps.js';
import type { GuestAgentClient } from './guest-agent-client.js';
import { EXPORT_ID_PREFIX, listBlockExports, removeExport, stopNbdServer } from './nbd-export.js';
import { thawGuest, removeUnusedOverlayFiles } from './live-snapshot.js';
import { OVERLAY_FILE_SUFFIX, isCommitJob, isOverlayFile, isOverlayNode } from './overlay-names.js';
import type { QmpClient } from './qmp-client.js';
import { backingNodeOf, listVmDisks } from './vm-disks.js';

/**
 * Puts a VM back the way blockrep found it, whatever moment an earlier run was killed at:
 * thaws a guest left frozen, finishes or ends blockrep's commit jobs, commits every blockrep
 * overlay that is still the active layer of a disk back into its base, and deletes overlay
 * files that no node has open. Safe to run at any time on a VM no blockrep run is working on,
 * and again after itself (it then finds nothing to do).
 */

export interface RecoveryReport {
  /** The guest was frozen and is now thawed. */
  thawed: boolean;
  /** What the guest agent said about the freeze state: 'thawed' | 'frozen' before, or why it was not asked. */
  agentState: 'thawed' | 'frozen' | 'not-checked';
  jobs: Array<{ job: string; status: string; error?: string }>;
  committed: Array<{ disk: string; overlay: string }>;
  removedFiles: string[];
  /** blockrep's NBD exports a killed run left (removed before anything else touches the disks). */
  removedExports: string[];
  /** QEMU's NBD server was stopped: it listened on blockrep's socket, so blockrep had started it. */
  stoppedNbdServer: boolean;
  /** Read copies of tracking bitmaps a killed run left. Generations are left to the next backup, which knows the reference. */
  removedBitmaps: Array<{ node: string; name: string }>;
  warnings: string[];
  /** Set when the guest agent could not be asked or the guest could not be thawed. */
  agentError: Error | undefined;
}

export interface RecoveryOptions {
  recoveryStep: string;
  /** blockrep's NBD socket for this VM (nbdSocketFor): a server listening there is blockrep's. */
  nbdSocket?: string;
  onWarning?: (message: string) => void;
}

export async function recoverVmState(qmp: QmpClient, agent: GuestAgentClient | undefined, options: RecoveryOptions): Promise<RecoveryReport> {
  const report: RecoveryReport = {
    thawed: false,
    agentState: 'not-checked',
    jobs: [],
    committed: [],
    removedFiles: [],
    removedExports: [],
    stoppedNbdServer: false,
    removedBitmaps: [],
    warnings: [],
    agentError: undefined,
  };
  const warn = (m: string): void => {
    report.warnings.push(m);
    options.onWarning?.(m);
  };

  // 1. The guest first: a frozen guest is down for its users.
  // Its failure does not stop the disks' recovery; the caller reports it.
  if (agent) {
    try {
      report.agentState = await agent.status();
      if (report.agentState === 'frozen') {
        await thawGuest(agent);
        report.thawed = true;
      }
    } catch (err) {
      report.agentError = err instanceof Error ? err : new Error(String(err));
    }
  }

  // 2. Exports of a killed run's tracked read (a busy bitmap and an open base), and its server.
  for (const e of await listBlockExports(qmp)) {
    if (!e.id.startsWith(EXPORT_ID_PREFIX)) continue;
    await removeExport(qmp, e.id);
    report.removedExports.push(e.id);
  }
  const ownSocket = options.nbdSocket !== undefined && (await isThere(options.nbdSocket));
  if (report.removedExports.length > 0 || ownSocket) {
    await stopNbdServer(qmp);
    report.stoppedNbdServer = true;
    if (options.nbdSocket !== undefined) await unlink(options.nbdSocket).catch(() => undefined);
  }
  // Read copies are never a reference: they go. Generations stay (only a run that knows the
  // repository knows which one is the reference of its latest version).
  const copies = (await listAllDirtyBitmaps(qmp)).filter((b) => parseBitmapName(b.bitmap.name)?.readCopy === true);
  for (const c of copies) {
    await runBitmapTransaction(qmp, [removeBitmapAction({ node: c.node, name: c.bitmap.name })]);
    report.removedBitmaps.push({ node: c.node, name: c.bitmap.name });
  }

  // 3. Commit jobs a killed run left: complete them (or let them end).
  for (const job of await queryJobs(qmp)) {
    if (!isCommitJob(job.id)) continue;
    const end = await finishCommitJob(qmp, job.id);
    report.jobs.push({ job: job.id, status: end.status, ...(end.error !== undefined ? { error: end.error } : {}) });
  }

  // 4. Disks still on a blockrep overlay: commit them back.
  const { disks } = await listVmDisks(qmp);
  for (const disk of disks) {
    if (!isOverlayFile(disk.file) && !isOverlayNode(disk.node)) {
      const deeper = disk.chain.slice(1).find(isOverlayFile);
      if (deeper) warn(`disk ${disk.id}: a blockrep overlay (${deeper}) is in its backing chain under another layer (${disk.file}); left alone`);
      continue;
    }
    const baseNode = await backingNodeOf(qmp, disk.node);
    const baseFile = disk.chain[1];
    if (baseNode === undefined || baseFile === undefined) {
      warn(`disk ${disk.id}: runs on ${disk.file}, which has no backing node to commit into; left alone`);
      continue;
    }
    await commitOverlay(qmp, { label: disk.id, overlayNode: disk.node, overlayFile: disk.file, baseNode, baseFile }, options.recoveryStep);
    report.committed.push({ disk: disk.id, overlay: disk.file });
  }

  // 5. Overlay files nobody has open: next to each image of each disk's chain.
  const after = await listVmDisks(qmp);
  const candidates = new Set<string>();
  for (const disk of after.disks) {
    for (const file of disk.chain) {
      if (!file.startsWith('/')) continue;
      let names: string[];
      try {
        names = await readdir(dirname(file));
      } catch {
        continue;
      }
      const own = `${basename(file)}${OVERLAY_FILE_SUFFIX}`;
      for (const n of names) if (n === own) candidates.add(join(dirname(file), n));
    }
  }
  report.removedFiles = await removeUnusedOverlayFiles(
    qmp,
    [...candidates].map((overlayFile) => ({ overlayFile })),
  );
  return report;
}

async function isThere(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
