import { isOverlayFile, VmLock } from '../hypervisor/index.js';
import {
  BACKUP_API_MIN_VERSION,
  backupWorkDir,
  commitDomainDisk,
  domainJob,
  domainLockPath,
  libvirtVersion,
  LibvirtDomain,
  planDomainOverlays,
  removeUnusedOverlays,
  snapshotCandidates,
  readBackupJob,
  takeDomainSnapshot,
  versionAtLeast,
  Virsh,
  type DomainDisk,
  type DomainOverlayTarget,
  type DomainSnapshot,
} from '../libvirt/index.js';
import type { Repository } from '../repository/index.js';
import { BlockrepError, isBlockrepError, assertDiskId, vmNameProblem, checkBlockSize } from '../shared/index.js';
import type { BackupImageOptions, DiskBackupReport } from './backup-image.js';
import { backupDomainThroughApi, type ApiBackupResult } from './backup-domain-api.js';
import { backupFrozenBase, collectCommits, type LiveDiskReport, type VmBackupFailure } from './backup-frozen-base.js';

/**
 * Live backup of a libvirt domain. Method `snapshot`: one atomic, disk-only external snapshot
 * of the chosen disks through virsh (quiesced by libvirt when the agent answers), each frozen
 * base backed up exactly as an offline image, each overlay committed back with a shallow active
 * commit and pivot (always, even when the send failed or the run was interrupted), both
 * definitions checked, overlays deleted. Method `backup-api`: libvirt's pull-mode backup with
 * checkpoints (backup-domain-api.ts), no overlay. `auto` picks backup-api when libvirt has it
 * (7.6 or later) and a chosen disk is qcow2 (only those can be tracked), else snapshot; the
 * report says which ran and why. Never prints.
 */

export const DOMAIN_BACKUP_METHODS = ['snapshot', 'backup-api', 'auto'] as const;
export type DomainBackupMethod = (typeof DOMAIN_BACKUP_METHODS)[number];

export interface BackupDomainRequest {
  domain: string;
  /** The first part of disk ids; default: the domain's name. */
  vmName?: string;
  /** libvirt URI (virsh --connect); default: libvirt's default. */
  connect?: string;
  method?: DomainBackupMethod;
  /** Disks to back up, by target (vda) or full disk id (<domain>/vda); default: every writable file disk. */
  disks?: string[];
  blockSize?: number;
  /** auto: quiesce when an agent answers, else warn and go on; require: fail without one; off: never. */
  quiesce: 'auto' | 'require' | 'off';
  /** Read every block, whatever changed-block tracking says. */
  fullScan?: boolean;
  /** A full read at least this often (ms); default DEFAULT_FULL_SCAN_EVERY_MS, 0: never forced by age. */
  fullScanEveryMs?: number;
}

/** Points a caller may observe (and, in tests, hold the run at). */
export type DomainPhase = 'snapshot-taken' | 'backup-begun' | 'disk-scanned';

export interface BackupDomainOptions extends Omit<BackupImageOptions, 'signal'> {
  signal?: AbortSignal;
  onWarning?: (message: string) => void;
  onPhase?: (phase: DomainPhase, disk?: string) => void | Promise<void>;
  /** For tests: the virsh program. */
  virshProgram?: string;
}

export interface DomainBackupReport {
  domain: string;
  /** The first part of its disk ids. */
  vm: string;
  method: 'snapshot' | 'backup-api';
  /** Why this method ran (what --method asked, or what auto found). */
  methodReason: string;
  /** The guest's filesystems were frozen (inside libvirt's snapshot call, or around backup-begin). */
  quiesced: boolean;
  /** Method snapshot: the snapshot call, an upper bound of the time the guest was frozen, when quiesced. */
  snapshot?: { snapshotMs: number };
  /** Method backup-api: freeze sent → thaw returned (absent when the guest was not frozen). */
  frozenMs?: number;
  /** Method backup-api: the job's steps, and how long it ran (begin → ended). */
  backupJob?: ApiBackupResult['backupJob'];
  /** Method backup-api: the checkpoint this run made, and the older ones of this repository it deleted or kept. */
  checkpoints?: ApiBackupResult['checkpoints'];
  /** Method snapshot: with overlayMs; method backup-api: as an image backup. */
  disks: Array<LiveDiskReport | DiskBackupReport>;
  failures: VmBackupFailure[];
  skippedDisks: Array<{ id: string; reason: string }>;
  warnings: string[];
  durationMs: number;
}

export function domainRecoveryCommand(domain: string, connect: string | undefined): string {
  const q = (s: string): string => (/^[A-Za-z0-9_./:@%+=-]+$/.test(s) ? s : `'${s.replaceAll("'", "'\\''")}'`);
  return `blockrep recover --domain ${q(domain)}${connect !== undefined ? ` --connect ${q(connect)}` : ''}`;
}

/** The method that runs, and why: `auto` takes backup-api where libvirt has it and a chosen disk can be tracked. */
export async function resolveDomainMethod(method: DomainBackupMethod | undefined, selected: DomainDisk[], virsh: Virsh): Promise<{ method: 'snapshot' | 'backup-api'; reason: string }> {
  if (method === 'snapshot') return { method, reason: 'asked for (method snapshot)' };
  const v = await libvirtVersion(virsh);
  const version = v.join('.');
  const hasApi = versionAtLeast(v, BACKUP_API_MIN_VERSION);
  if (method === 'backup-api') {
    if (!hasApi) throw new BlockrepError('LIBVIRT_ERROR', `libvirt ${version} is older than ${BACKUP_API_MIN_VERSION.join('.')}, which the backup-api method needs (per-disk incremental backups); use --method snapshot`, { details: { libvirt: version } });
    return { method, reason: `asked for (method backup-api; libvirt ${version})` };
  }
  if (!hasApi) return { method: 'snapshot', reason: `auto: libvirt ${version} is older than ${BACKUP_API_MIN_VERSION.join('.')} (no backup API with per-disk incremental backups)` };
  const qcow2 = selected.filter((d) => d.format === 'qcow2').map((d) => d.target);
  if (qcow2.length === 0) return { method: 'snapshot', reason: `auto: no chosen disk is qcow2, and only qcow2 disks can hold a checkpoint (libvirt ${version})` };
  return { method: 'backup-api', reason: `auto: libvirt ${version} has the backup API and ${qcow2.join(', ')} ${qcow2.length === 1 ? 'is' : 'are'} qcow2 (changed blocks through checkpoints, no overlay)` };
}

export async function backupDomain(repo: Repository, request: BackupDomainRequest, options: BackupDomainOptions = {}): Promise<DomainBackupReport> {
  const started = Date.now();
  if (request.blockSize !== undefined) checkBlockSize(request.blockSize);
  const vm = request.vmName ?? request.domain;
  const problem = vmNameProblem(vm);
  if (problem !== undefined) {
    throw new BlockrepError('USAGE', `${request.vmName !== undefined ? 'the VM name' : 'the domain name'} ${JSON.stringify(vm.slice(0, 240))} cannot be the first part of a disk id: ${problem}${request.vmName === undefined ? '; give another with --vm NAME' : ''}`);
  }
  const warnings: string[] = [];
  const warn = (m: string): void => {
    warnings.push(m);
    options.onWarning?.(m);
  };
  const recoveryStep = domainRecoveryCommand(request.domain, request.connect);
  const virsh = new Virsh({ ...(request.connect !== undefined ? { connect: request.connect } : {}), ...(options.virshProgram !== undefined ? { program: options.virshProgram } : {}) });
  const domain = new LibvirtDomain(virsh, request.domain);

  const lock = await VmLock.acquireAt(await domainLockPath(request.connect, request.domain), 'live backup');
  try {
    const state = await domain.state();
    if (state !== 'running' && state !== 'paused') {
      throw new BlockrepError('DOMAIN_NOT_RUNNING', `domain ${request.domain} is ${state || 'not running'}; a live backup needs a running domain (back up a shut-off domain's image files as images)`, { details: { state } });
    }
    // Independent questions, asked at once (each is a virsh process and a connection).
    const [live, persistent, job] = await Promise.all([domain.definition(), domain.definition(true), domainJob(domain)]);
    for (const [which, def] of [['live', live], ['persistent', persistent]] as const) {
      const left = def.disks.find((d) => d.source !== undefined && isOverlayFile(d.source));
      if (left) {
        throw new BlockrepError('RECOVERY_NEEDED', `disk ${left.target} of domain ${request.domain} runs on a blockrep overlay left by an earlier run (${left.source}, ${which} definition). Run first: ${recoveryStep}`, {
          details: { disk: left.target, overlay: left.source, recovery: recoveryStep },
        });
      }
    }
    // A pull-mode backup job shows as a block job on each of its disks: tell blockrep's own (recover) from another tool's first.
    const workDir = await backupWorkDir(request.connect, request.domain);
    if (job.type !== 'None' && job.operation === 'Backup') {
      const backup = await readBackupJob(domain);
      if (backup?.socket !== undefined && backup.socket.startsWith(`${workDir}/`)) {
        throw new BlockrepError('RECOVERY_NEEDED', `a backup job of an earlier blockrep run is still active on domain ${request.domain}. Run first: ${recoveryStep}`, { details: { recovery: recoveryStep } });
      }
      throw new BlockrepError('BLOCK_JOB_ACTIVE', `domain ${request.domain} is in a backup job that is not blockrep's (NBD socket ${backup?.socket ?? 'unknown'}); wait for it to end (${domain.command(['domjobinfo', request.domain])})`, {
        details: { job: 'backup' },
      });
    }
    const { disks: candidates, skipped } = snapshotCandidates(live);
    const selected = selectDomainDisks(candidates, vm, request.disks);
    for (const d of selected) assertDiskId(`${vm}/${d.target}`);
    const diskJobs = await Promise.all(selected.map((d) => (d.mirror ? Promise.resolve({ type: d.mirror.job ?? 'block job' }) : domain.blockJob(d.target))));
    for (const [i, d] of selected.entries()) {
      const diskJob = diskJobs[i];
      if (diskJob) {
        throw new BlockrepError('BLOCK_JOB_ACTIVE', `disk ${d.target} of domain ${request.domain} is in a block job (${diskJob.type}) that is not blockrep's; wait for it to end (${domain.command(['blockjob', request.domain, d.target, '--info'])})`, {
          details: { disk: d.target, job: diskJob.type },
        });
      }
    }
    const chosen = await resolveDomainMethod(request.method, selected, virsh);

    let quiesce = request.quiesce !== 'off';
    if (quiesce && (live.agent?.state !== 'connected' || state === 'paused')) {
      // A paused guest cannot answer its agent: libvirt would wait for a freeze that never comes.
      const why =
        state === 'paused'
          ? 'it is paused, so its guest agent cannot answer'
          : live.agent
            ? 'its guest agent is not connected (qemu-guest-agent not running in the guest?)'
            : 'it has no guest-agent channel (org.qemu.guest_agent.0)';
      if (request.quiesce === 'require') throw new BlockrepError('AGENT_UNAVAILABLE', `domain ${request.domain} cannot be quiesced: ${why}`);
      warn(`domain ${request.domain}: ${why}; going on without freezing the guest: the backup is crash-consistent only (use --require-quiesce to fail instead)`);
      quiesce = false;
    }
    if (options.signal?.aborted) throw new BlockrepError('INTERRUPTED', 'interrupted before the snapshot; nothing was changed');

    if (chosen.method === 'backup-api') {
      const r = await backupDomainThroughApi(repo, {
        domain,
        connect: request.connect,
        vm,
        allDisks: live.disks,
        selected,
        blockSize: request.blockSize,
        quiesce: { wanted: quiesce, mode: request.quiesce },
        fullScan: request.fullScan === true,
        fullScanEveryMs: request.fullScanEveryMs,
        recoveryStep,
        warn,
        signal: options.signal,
        onPhase: options.onPhase,
        backupOptions: options,
      });
      if (options.signal?.aborted && r.disks.length + r.failures.length < selected.length) {
        throw new BlockrepError('INTERRUPTED', `interrupted; no half-done version was published, the backup job on domain ${request.domain} was ended`);
      }
      return {
        domain: request.domain,
        vm,
        method: 'backup-api',
        methodReason: chosen.reason,
        quiesced: r.quiesced,
        ...(r.frozenMs !== undefined ? { frozenMs: r.frozenMs } : {}),
        backupJob: r.backupJob,
        checkpoints: r.checkpoints,
        disks: r.disks,
        failures: r.failures,
        skippedDisks: skipped,
        warnings,
        durationMs: Date.now() - started,
      };
    }

    const targets = planDomainOverlays(selected, persistent);
    // An overlay file nobody uses is a leftover of a killed run; libvirt would refuse to overwrite it.
    const stale = await removeUnusedOverlays(domain, targets.map((t) => t.overlayFile));
    for (const f of stale) warn(`removed ${f}, an overlay file an earlier run left behind (the domain did not use it)`);

    let snapshot: DomainSnapshot;
    try {
      snapshot = await takeDomainSnapshot(domain, live.disks, targets, quiesce);
    } catch (err) {
      if (!(quiesce && request.quiesce === 'auto' && isBlockrepError(err) && err.code === 'AGENT_UNAVAILABLE')) throw err;
      warn(`${err.message}; going on without freezing the guest: the backup is crash-consistent only (use --require-quiesce to fail instead)`);
      snapshot = await takeDomainSnapshot(domain, live.disks, targets, false);
    }
    const { reports, failures } = await sendAndCommit(repo, domain, vm, snapshot, request, options, recoveryStep);
    if (options.signal?.aborted && reports.length + failures.length < snapshot.targets.length) {
      throw new BlockrepError('INTERRUPTED', `interrupted; no half-done version was published and every disk of domain ${request.domain} runs on its own image again`);
    }
    return {
      domain: request.domain,
      vm,
      method: 'snapshot',
      methodReason: chosen.reason,
      quiesced: snapshot.quiesced,
      snapshot: { snapshotMs: snapshot.snapshotMs },
      disks: reports,
      failures,
      skippedDisks: skipped,
      warnings,
      durationMs: Date.now() - started,
    };
  } finally {
    await lock.release();
  }
}

/**
 * Backs up each base and commits its overlay back once it is read (while the next disk is
 * read). Every overlay is committed, whatever fails; commit failures are thrown after all
 * commits were tried, send failures returned.
 */
async function sendAndCommit(
  repo: Repository,
  domain: LibvirtDomain,
  vm: string,
  snapshot: DomainSnapshot,
  request: BackupDomainRequest,
  options: BackupDomainOptions,
  recoveryStep: string,
): Promise<{ reports: LiveDiskReport[]; failures: VmBackupFailure[] }> {
  const commits = new Map<DomainOverlayTarget, Promise<{ pivotedAt: number }>>();
  // libvirt runs one job per domain at a time anyway; a chain keeps the commits in order.
  let chain: Promise<unknown> = Promise.resolve();
  const startCommit = (t: DomainOverlayTarget): void => {
    if (commits.has(t)) return;
    const p = chain.then(
      () => commitDomainDisk(domain, t, recoveryStep),
      () => commitDomainDisk(domain, t, recoveryStep),
    );
    p.catch(() => undefined);
    chain = p.catch(() => undefined);
    commits.set(t, p);
  };
  const done = new Map<DomainOverlayTarget, DiskBackupReport>();
  const failures: VmBackupFailure[] = [];
  try {
    await options.onPhase?.('snapshot-taken');
    for (const t of snapshot.targets) {
      if (options.signal?.aborted) break;
      const r = await backupFrozenBase(repo, { path: t.baseFile, format: t.baseFormat, diskId: `${vm}/${t.target}`, vm, blockSize: request.blockSize }, options);
      if (r && 'report' in r) done.set(t, r.report);
      else if (r) failures.push(r.failure);
      startCommit(t);
      await options.onPhase?.('disk-scanned', t.target);
    }
  } finally {
    for (const t of snapshot.targets) startCommit(t);
  }

  const reports = await collectCommits(snapshot.targets, commits, done, snapshot.snapshotAt, recoveryStep);
  return { reports, failures };
}

/** The disks to back up: all candidates, or those `wanted` names by target (`<domain>/` prefix allowed). */
export function selectDomainDisks(all: DomainDisk[], domain: string, wanted: string[] | undefined): DomainDisk[] {
  if (all.length === 0) throw new BlockrepError('USAGE', `domain ${domain} has no writable file disk to back up`);
  if (wanted === undefined || wanted.length === 0) return all;
  const picked: DomainDisk[] = [];
  for (const w of wanted) {
    const id = w.startsWith(`${domain}/`) ? w.slice(domain.length + 1) : w;
    const d = all.find((x) => x.target === id);
    if (!d) throw new BlockrepError('USAGE', `domain ${domain} has no disk ${JSON.stringify(w)} to back up; its disks: ${all.map((x) => x.target).join(', ')}`);
    if (!picked.includes(d)) picked.push(d);
  }
  return picked;
}
