import { isOverlayFile, VmLock } from '../hypervisor/index.js';
import {
  commitDomainDisk,
  domainLockPath,
  LibvirtDomain,
  planDomainOverlays,
  removeUnusedOverlays,
  snapshotCandidates,
  takeDomainSnapshot,
  Virsh,
  type DomainDisk,
  type DomainOverlayTarget,
  type DomainSnapshot,
} from '../libvirt/index.js';
import type { Repository } from '../repository/index.js';
import { BlockrepError, isBlockrepError, assertDiskId, vmNameProblem, checkBlockSize } from '../shared/index.js';
import type { BackupImageOptions, DiskBackupReport } from './backup-image.js';
import { backupFrozenBase, collectCommits, type LiveDiskReport, type VmBackupFailure } from './backup-frozen-base.js';

/**
 * Live backup of a libvirt domain. Method `snapshot`: one atomic, disk-only external snapshot
 * of the chosen disks through virsh (quiesced by libvirt when the agent answers), each frozen
 * base backed up exactly as an offline image, each overlay committed back with a shallow active
 * commit and pivot (always, even when the send failed or the run was interrupted), both
 * definitions checked, overlays deleted. Never prints.
 * Method `backup-api` (libvirt's pull-mode backup with checkpoints) is planned; `auto` means
 * `snapshot` until it exists.
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
export type DomainPhase = 'snapshot-taken' | 'disk-scanned';

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
  method: 'snapshot';
  /** The guest's filesystems were frozen (inside libvirt's snapshot call). */
  quiesced: boolean;
  /** The snapshot call: an upper bound of the time the guest was frozen, when quiesced. */
  snapshot: { snapshotMs: number };
  disks: LiveDiskReport[];
  failures: VmBackupFailure[];
  skippedDisks: Array<{ id: string; reason: string }>;
  warnings: string[];
  durationMs: number;
}

export function domainRecoveryCommand(domain: string, connect: string | undefined): string {
  const q = (s: string): string => (/^[A-Za-z0-9_./:@%+=-]+$/.test(s) ? s : `'${s.replaceAll("'", "'\\''")}'`);
  return `blockrep recover --domain ${q(domain)}${connect !== undefined ? ` --connect ${q(connect)}` : ''}`;
}

/** `auto` is `snapshot` until the backup-api method exists. */
export function resolveDomainMethod(method: DomainBackupMethod | undefined): 'snapshot' {
  if (method === undefined || method === 'snapshot' || method === 'auto') return 'snapshot';
  throw new BlockrepError('USAGE', `method ${method} is not available yet (it needs the NBD client); use --method snapshot (or auto, which means snapshot for now)`);
}

export async function backupDomain(repo: Repository, request: BackupDomainRequest, options: BackupDomainOptions = {}): Promise<DomainBackupReport> {
  const started = Date.now();
  resolveDomainMethod(request.method);
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
      throw new BlockrepError('DOMAIN_NOT_RUNNING', `domain ${request.domain} is ${state || 'not running'}; the snapshot method backs up a running domain (back up a shut-off domain's image files as images)`, { details: { state } });
    }
    const live = await domain.definition();
    const persistent = await domain.definition(true);
    for (const [which, def] of [['live', live], ['persistent', persistent]] as const) {
      const left = def.disks.find((d) => d.source !== undefined && isOverlayFile(d.source));
      if (left) {
        throw new BlockrepError('RECOVERY_NEEDED', `disk ${left.target} of domain ${request.domain} runs on a blockrep overlay left by an earlier run (${left.source}, ${which} definition). Run first: ${recoveryStep}`, {
          details: { disk: left.target, overlay: left.source, recovery: recoveryStep },
        });
      }
    }
    const { disks: candidates, skipped } = snapshotCandidates(live);
    const selected = selectDomainDisks(candidates, vm, request.disks);
    for (const d of selected) {
      assertDiskId(`${vm}/${d.target}`);
      const job = d.mirror ? { type: d.mirror.job ?? 'block job' } : await domain.blockJob(d.target);
      if (job) {
        throw new BlockrepError('BLOCK_JOB_ACTIVE', `disk ${d.target} of domain ${request.domain} is in a block job (${job.type}) that is not blockrep's; wait for it to end (${domain.command(['blockjob', request.domain, d.target, '--info'])})`, {
          details: { disk: d.target, job: job.type },
        });
      }
    }
    const targets = planDomainOverlays(selected, persistent);
    // An overlay file nobody uses is a leftover of a killed run; libvirt would refuse to overwrite it.
    const stale = await removeUnusedOverlays(domain, targets.map((t) => t.overlayFile));
    for (const f of stale) warn(`removed ${f}, an overlay file an earlier run left behind (the domain did not use it)`);

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
