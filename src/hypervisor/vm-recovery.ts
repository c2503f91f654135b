import { readdir } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { commitOverlay, finishCommitJob, queryJobs } from './block-commit.js';
import type { GuestAgentClient } from './guest-agent-client.js';
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
  warnings: string[];
  /** Set when the guest agent could not be asked or the guest could not be thawed. */
  agentError: Error | undefined;
}

export interface RecoveryOptions {
  recoveryStep: string;
  onWarning?: (message: string) => void;
}

export async function recoverVmState(qmp: QmpClient, agent: GuestAgentClient | undefined, options: RecoveryOptions): Promise<RecoveryReport> {
  const report: RecoveryReport = { thawed: false, agentState: 'not-checked', jobs: [], committed: [], removedFiles: [], warnings: [], agentError: undefined };
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

  // 2. Commit jobs a killed run left: complete them (or let them end).
  for (const job of await queryJobs(qmp)) {
    if (!isCommitJob(job.id)) continue;
    const end = await finishCommitJob(qmp, job.id);
    report.jobs.push({ job: job.id, status: end.status, ...(end.error !== undefined ? { error: end.error } : {}) });
  }

  // 3. Disks still on a blockrep overlay: commit them back.
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

  // 4. Overlay files nobody has open: next to each image of each disk's chain.
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
