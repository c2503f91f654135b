import { isOverlayFile, overlayFileFor } from '../hypervisor/index.js';
import { BlockrepError, isBlockrepError } from '../shared/index.js';
import { domainJob, endBackupJob, readBackupJob, removeBackupWorkDir } from './domain-backup-job.js';
import { filesInUse, removeUnusedOverlays } from './domain-snapshot.js';
import type { LibvirtDomain } from './libvirt-domain.js';

/**
 * Puts a libvirt domain back the way blockrep found it, whatever moment an earlier run was
 * killed at: thaws the guest (`domfsthaw`), aborts a backup job of blockrep's (its NBD socket is in
 * blockrep's work folder) and removes that folder (socket, scratch files), aborts a block job left on a blockrep overlay,
 * commits every disk that runs on a blockrep overlay back into its base (shallow, with pivot),
 * and deletes overlay files neither definition uses. Safe to run again (it then does nothing).
 * Checkpoints are left alone: without the repository, recover cannot tell which one a published
 * version needs; the next backup prunes blockrep's old ones.
 */

export interface DomainRecoveryReport {
  /** Filesystems that were frozen and are now thawed; undefined when the agent could not be asked. */
  thawedFilesystems: number | undefined;
  agent: 'ok' | 'unavailable';
  jobs: Array<{ disk: string; type: string; action: 'aborted' }>;
  committed: Array<{ disk: string; overlay: string; base: string }>;
  removedFiles: string[];
  warnings: string[];
}

export async function recoverDomainState(domain: LibvirtDomain, options: { recoveryStep: string; workDir: string; onWarning?: (m: string) => void }): Promise<DomainRecoveryReport> {
  const report: DomainRecoveryReport = { thawedFilesystems: undefined, agent: 'ok', jobs: [], committed: [], removedFiles: [], warnings: [] };
  const warn = (m: string): void => {
    report.warnings.push(m);
    options.onWarning?.(m);
  };
  const state = await domain.state();
  const running = state === 'running' || state === 'paused';

  if (running) {
    // 1. The guest first: a frozen guest is down for its users.
    try {
      report.thawedFilesystems = await domain.thaw();
    } catch (err) {
      if (!isBlockrepError(err) || err.code !== 'AGENT_UNAVAILABLE') {
        throw new BlockrepError('THAW_FAILED', `the guest of domain ${domain.name} could not be thawed (${err instanceof Error ? err.message : String(err)}); it may still be frozen. Run this again; if it keeps failing, check qemu-guest-agent in the guest`, { cause: err });
      }
      report.agent = 'unavailable';
      // Without an agent nobody can have frozen the guest through it.
      warn(`${err.message}; the guest's freeze state was not checked`);
    }

    // 2. A pull-mode backup job of blockrep's: end it (the checkpoint it made stays; the next backup judges it).
    let foreignBackup = false;
    const job = await domainJob(domain);
    if (job.type !== 'None' && job.operation === 'Backup') {
      const backup = await readBackupJob(domain);
      if (backup?.socket !== undefined && backup.socket.startsWith(`${options.workDir}/`)) {
        await endBackupJob(domain);
        for (const d of backup.disks) report.jobs.push({ disk: d.target, type: 'Backup', action: 'aborted' });
      } else {
        foreignBackup = true;
        warn(`a backup job that is not blockrep's runs on domain ${domain.name} (${backup?.socket ?? 'no socket'}); left alone`);
      }
    }
    if (!foreignBackup && (await removeBackupWorkDir(options.workDir))) report.removedFiles.push(options.workDir);

    // 3. Disks on a blockrep overlay: end a job left on them, then commit them back.
    for (const disk of (await domain.definition()).disks) {
      const onOverlay = disk.source !== undefined && isOverlayFile(disk.source);
      const job = disk.source !== undefined ? await domain.blockJob(disk.target) : undefined;
      if (!onOverlay) {
        if (job) warn(`disk ${disk.target}: a block job (${job.type}) runs on it that is not blockrep's; left alone`);
        const deeper = disk.chain.find((l) => l.source !== undefined && isOverlayFile(l.source));
        if (deeper) warn(`disk ${disk.target}: a blockrep overlay (${deeper.source}) is in its backing chain under another layer (${disk.source}); left alone`);
        continue;
      }
      const base = disk.chain[0]?.source;
      if (base === undefined) {
        warn(`disk ${disk.target}: runs on ${disk.source}, which has no backing file to commit into; left alone`);
        continue;
      }
      if (job) {
        // Aborting an active commit leaves the disk on its overlay with nothing lost; the commit below then finishes cleanly.
        await domain.virsh.run(['blockjob', '--domain', domain.name, '--path', disk.target, '--abort'], { domain: domain.name, timeoutMs: 120_000 });
        report.jobs.push({ disk: disk.target, type: job.type, action: 'aborted' });
      }
      try {
        await domain.virsh.run(['blockcommit', '--domain', domain.name, '--path', disk.target, '--active', '--shallow', '--pivot', '--wait'], { domain: domain.name, timeoutMs: 3_600_000 });
      } catch (err) {
        throw new BlockrepError('COMMIT_FAILED', `disk ${disk.target} of domain ${domain.name}: its overlay ${disk.source} could not be committed back (${err instanceof Error ? err.message : String(err)}); it was kept. Run this again; if it keeps failing: ${domain.command(['blockjob', domain.name, disk.target, '--info'])}`, {
          cause: err,
          details: { disk: disk.target, overlay: disk.source },
        });
      }
      report.committed.push({ disk: disk.target, overlay: disk.source!, base });
    }
  }

  // 4. Check both definitions: no disk may be left on an overlay.
  const live = await domain.definition();
  const persistent = await domain.definition(true);
  for (const [which, def] of [['live', live], ['persistent', persistent]] as const) {
    if (which === 'live' && !running) continue;
    const left = def.disks.find((d) => d.source !== undefined && isOverlayFile(d.source));
    if (left) {
      const why = running
        ? `the ${which} definition still has disk ${left.target} on the blockrep overlay ${left.source}`
        : `domain ${domain.name} is ${state || 'not running'} and its definition has disk ${left.target} on the blockrep overlay ${left.source}; start it (virsh start ${domain.name}) and run this again`;
      throw new BlockrepError('RECOVERY_NEEDED', why, { details: { disk: left.target, overlay: left.source, committed: report.committed } });
    }
  }

  // 5. Leftover overlay files next to any image the domain uses; a work folder of a shut-off domain.
  const candidates = [...filesInUse([live, persistent])].filter((f) => !isOverlayFile(f)).map(overlayFileFor);
  report.removedFiles.push(...(await removeUnusedOverlays(domain, candidates)));
  if (!running && (await removeBackupWorkDir(options.workDir))) report.removedFiles.push(options.workDir);
  return report;
}
