import { z } from 'zod';
import { listBlockExports, listDirtyBitmaps, nbdSocketFor, EXPORT_ID_PREFIX, commitOverlay, queryJobs, type CommitResult, openGuestAgent, type GuestAgentClient, planOverlays, takeLiveSnapshot, type LiveSnapshot, type OverlayTarget, isCommitJob, isOverlayFile, isOverlayNode, QmpClient, listVmDisks, type VmDisk, VmLock } from '../hypervisor/index.js';
import type { Repository } from '../repository/index.js';
import { BlockrepError, isBlockrepError, type ErrorCode, assertDiskId, vmNameProblem, checkBlockSize } from '../shared/index.js';
import { DEFAULT_BLOCK_SIZE, type BackupImageOptions, type DiskBackupReport, type TrackedRead } from './backup-image.js';
import { finishBitmapChain, planBitmapChain, readChainDirtyExtents, trackedReadOf, type BitmapChainPlan, type ChainOutcome } from './qmp-bitmap-chain.js';
import { DEFAULT_FULL_SCAN_EVERY_MS, type DirtyExtent, type ScanDecision } from './scan-plan.js';
import { backupFrozenBase, collectCommits, type LiveDiskReport, type VmBackupFailure } from './backup-frozen-base.js';

export type { LiveDiskReport, VmBackupFailure } from './backup-frozen-base.js';
import { runHostHook, type HostHookPhase, type HostHookResult, type HostHooks } from './host-hook.js';

/**
 * Live backup of a running QEMU VM: freeze the guest, switch every disk to an overlay in one
 * transaction, thaw (always), back up each frozen base exactly as an offline image, and commit
 * every overlay back (always, even when the send failed or the run was interrupted). Never
 * prints: warnings and phases go to callbacks, the result is data.
 */

export interface BackupVmRequest {
  qmpSocket: string;
  /** The guest agent's socket; default: found through QMP (the port org.qemu.guest_agent.0). */
  qgaSocket?: string;
  /** The VM's name in disk ids; default: QEMU's -name. */
  vmName?: string;
  /** Disks to back up, by drive/device id (or full disk id); default: every writable disk. */
  disks?: string[];
  /** Omitted: each disk's current block size (backupImage decides). */
  blockSize?: number;
  /**
   * auto: freeze when an agent answers, else warn and go on (also when the guest refuses the
   * freeze, e.g. a failing fsfreeze hook); require: fail without an agent or a freeze; off: never freeze.
   */
  quiesce: 'auto' | 'require' | 'off';
  /** Commands run on this host before the freeze and after the thaw. */
  hooks?: HostHooks;
  /** Read every block, whatever changed-block tracking says. */
  fullScan?: boolean;
  /** A full read at least this often (ms); default DEFAULT_FULL_SCAN_EVERY_MS, 0: never forced by age. */
  fullScanEveryMs?: number;
}

/** Points of the procedure that a caller may observe (and, in tests, hold the run at). */
export type LivePhase = 'frozen' | 'snapshot-taken' | 'bitmap-exported' | 'disk-scanned' | 'commit-ready';

export interface BackupVmOptions extends Omit<BackupImageOptions, 'signal'> {
  signal?: AbortSignal;
  onWarning?: (message: string) => void;
  onPhase?: (phase: LivePhase, disk?: string) => void | Promise<void>;
  /** Each host hook's result as soon as it ended (also in the report). */
  onHook?: (result: HostHookResult) => void;
  /** For tests: shorter waits. */
  timeouts?: { qmpGreetingMs?: number; agentSyncMs?: number; freezeMs?: number; thawMs?: number };
}

export interface VmBackupReport {
  vm: string;
  /** The guest's filesystems were frozen for the snapshot. */
  quiesced: boolean;
  /** Freeze sent → thaw returned; undefined when not quiesced. */
  frozenMs: number | undefined;
  snapshot: { freezeMs: number | undefined; transactionMs: number; thawMs: number | undefined; frozenFilesystems: number | undefined };
  disks: LiveDiskReport[];
  failures: VmBackupFailure[];
  skippedDisks: Array<{ id: string; reason: string }>;
  warnings: string[];
  durationMs: number;
  /** The guest refused the freeze (quiesce auto): the backup went on crash-consistent. */
  freezeFailure?: { code: ErrorCode; message: string };
  /** The host hooks that ran, in order. */
  hooks?: HostHookResult[];
}

/** The command that puts this VM right after a failure, quoted in messages. */
export function recoveryCommand(qmpSocket: string, qgaSocket?: string): string {
  const q = (s: string): string => (/^[A-Za-z0-9_./:@%+=-]+$/.test(s) ? s : `'${s.replaceAll("'", "'\\''")}'`);
  return `blockrep recover --qmp ${q(qmpSocket)}${qgaSocket !== undefined ? ` --qga ${q(qgaSocket)}` : ''}`;
}

export async function backupVm(repo: Repository, request: BackupVmRequest, options: BackupVmOptions = {}): Promise<VmBackupReport> {
  const started = Date.now();
  if (request.blockSize !== undefined) checkBlockSize(request.blockSize);
  const warnings: string[] = [];
  const warn = (m: string): void => {
    warnings.push(m);
    options.onWarning?.(m);
  };
  const signal = options.signal;
  const recoveryStep = recoveryCommand(request.qmpSocket, request.qgaSocket);

  const lock = await VmLock.acquire(request.qmpSocket, 'live backup');
  let qmp: QmpClient | undefined;
  let agent: GuestAgentClient | undefined;
  try {
    qmp = await QmpClient.connect(request.qmpSocket, options.timeouts?.qmpGreetingMs !== undefined ? { greetingTimeoutMs: options.timeouts.qmpGreetingMs } : {});
    const vm = await vmNameOf(qmp, request.vmName);
    const { disks: all, skipped } = await listVmDisks(qmp);
    const leftover = all.find((d) => isOverlayFile(d.file) || isOverlayNode(d.node));
    if (leftover) {
      throw new BlockrepError('RECOVERY_NEEDED', `disk ${leftover.id} runs on a blockrep overlay left by an earlier run (${leftover.file}). Run first: ${recoveryStep}`, {
        details: { disk: leftover.id, overlay: leftover.file, recovery: recoveryStep },
      });
    }
    const leftJob = (await queryJobs(qmp)).find((j) => isCommitJob(j.id));
    if (leftJob) {
      throw new BlockrepError('RECOVERY_NEEDED', `QEMU still has blockrep's commit job ${leftJob.id} (${leftJob.status}) from an earlier run. Run first: ${recoveryStep}`, {
        details: { job: leftJob.id, recovery: recoveryStep },
      });
    }
    const leftExport = (await listBlockExports(qmp)).find((e) => e.id.startsWith(EXPORT_ID_PREFIX));
    if (leftExport) {
      throw new BlockrepError('RECOVERY_NEEDED', `QEMU still exports ${leftExport.node} for an earlier blockrep run (${leftExport.id}). Run first: ${recoveryStep}`, {
        details: { export: leftExport.id, recovery: recoveryStep },
      });
    }
    const selected = selectDisks(all, vm, request.disks);
    const targets = planOverlays(selected);
    for (const t of targets) assertDiskId(`${vm}/${t.disk.id}`);

    if (request.quiesce !== 'off') {
      try {
        agent = await openGuestAgent(qmp, request.qgaSocket, options.timeouts?.agentSyncMs !== undefined ? { syncTimeoutMs: options.timeouts.agentSyncMs } : {}, warn);
      } catch (err) {
        if (!isBlockrepError(err) || err.code !== 'AGENT_UNAVAILABLE' || request.quiesce === 'require') throw err;
        warn(`${err.message}; going on without freezing the guest: the backup is crash-consistent only (use --require-quiesce to fail instead)`);
      }
      if (agent && (await agent.status()) === 'frozen') {
        throw new BlockrepError('RECOVERY_NEEDED', `the guest is frozen already (by an earlier run or another tool); blockrep will not freeze it again. To thaw it: ${recoveryStep}`, {
          details: { recovery: recoveryStep },
        });
      }
    }
    if (signal?.aborted) throw new BlockrepError('INTERRUPTED', 'interrupted before the snapshot; nothing was changed');

    // Changed-block tracking: each disk's chain cleaned and its read decided before the freeze.
    const plans = new Map<OverlayTarget, BitmapChainPlan>();
    const policy = { fullScan: request.fullScan === true, fullScanEveryMs: request.fullScanEveryMs ?? DEFAULT_FULL_SCAN_EVERY_MS, nowMs: Date.now() };
    for (const t of targets) {
      try {
        plans.set(t, await planBitmapChain(qmp, repo, { diskId: `${vm}/${t.disk.id}`, node: t.baseNode, baseFile: t.baseFile, format: t.baseFormat, blockSize: request.blockSize }, policy, DEFAULT_BLOCK_SIZE));
      } catch (err) {
        warn(`disk ${vm}/${t.disk.id}: changed-block tracking could not start (${err instanceof Error ? err.message : String(err)}); the disk is read in full and the next run too`);
      }
    }

    const snapshotOptions = {
      recoveryStep,
      ...(signal ? { signal } : {}),
      onFrozen: async () => options.onPhase?.('frozen'),
      ...(options.timeouts?.freezeMs !== undefined ? { freezeTimeoutMs: options.timeouts.freezeMs } : {}),
      ...(options.timeouts?.thawMs !== undefined ? { thawTimeoutMs: options.timeouts.thawMs } : {}),
      extraActions: [...plans.values()].flatMap((p) => p.actions),
    };
    const hooks = request.hooks;
    const hookResults: HostHookResult[] = [];
    const runHook = async (phase: HostHookPhase, command: NonNullable<HostHooks['beforeFreeze']>): Promise<HostHookResult> => {
      const r = await runHostHook(command, phase, vm, hooks!.timeoutMs);
      hookResults.push(r);
      options.onHook?.(r);
      return r;
    };
    let freezeFailure: VmBackupReport['freezeFailure'];
    let snapshot: LiveSnapshot | undefined;
    try {
      if (hooks?.beforeFreeze) {
        const r = await runHook('before-freeze', hooks.beforeFreeze);
        if (r.status !== 'ok') {
          const what = `the host hook beforeFreeze (${r.command}) ${r.message ?? 'failed'}`;
          if (hooks.onFailure === 'abort') {
            throw new BlockrepError('HOOK_FAILED', `${what}; nothing was frozen or snapshotted (hooks.onFailure: abort)`, { details: { hook: r } });
          }
          warn(`${what}; going on (hooks.onFailure: continue)`);
        }
      }
      try {
        snapshot = await takeLiveSnapshot(qmp, agent, targets, snapshotOptions);
      } catch (err) {
        // A refused freeze (a failing fsfreeze hook in the guest, say) left the guest thawed and
        // the VM unchanged: with quiesce auto, a crash-consistent backup beats none.
        if (!isBlockrepError(err) || err.code !== 'FREEZE_FAILED' || request.quiesce !== 'auto') throw err;
        freezeFailure = { code: err.code, message: err.message };
        warn(`FREEZE_FAILED: ${err.message}; going on without freezing: the backup is crash-consistent only (use --require-quiesce to fail instead)`);
        snapshot = await takeLiveSnapshot(qmp, undefined, targets, snapshotOptions);
      }
    } finally {
      // Whatever beforeFreeze paused is resumed, even when the snapshot failed.
      if (hooks?.afterThaw) {
        try {
          const r = await runHook('after-thaw', hooks.afterThaw);
          if (r.status !== 'ok') warn(`the host hook afterThaw (${r.command}) ${r.message ?? 'failed'}${snapshot ? '; the snapshot was taken, the backup goes on' : ''}`);
        } catch {
          // a warning printer must not keep the overlays in place
        }
      }
    }
    // From here on every overlay must be committed back: nothing may throw before sendAndCommit.
    try {
      for (const w of snapshot.warnings) warn(w);
      // The agent's channel is free for others once the guest is thawed.
      if (!snapshot.thawError) {
        const a = agent;
        agent = undefined;
        await a?.close();
      }
    } catch {
      // a warning printer or a closing socket must not keep the overlays in place
    }

    const { reports, failures } = await sendAndCommit(repo, qmp, vm, snapshot, request, { ...options, onWarning: warn }, recoveryStep, plans);
    if (snapshot.thawError) throw snapshot.thawError;
    if (signal?.aborted && reports.length + failures.length < snapshot.targets.length) {
      throw new BlockrepError('INTERRUPTED', `interrupted; no half-done version was published and every disk of VM ${vm} runs on its own image again`);
    }
    return {
      vm,
      quiesced: snapshot.frozenMs !== undefined && (snapshot.frozenFilesystems ?? 0) > 0,
      frozenMs: snapshot.frozenMs,
      snapshot: { freezeMs: snapshot.freezeMs, transactionMs: snapshot.transactionMs, thawMs: snapshot.thawMs, frozenFilesystems: snapshot.frozenFilesystems },
      disks: reports,
      failures,
      skippedDisks: skipped,
      warnings,
      durationMs: Date.now() - started,
      ...(freezeFailure ? { freezeFailure } : {}),
      ...(hooks ? { hooks: hookResults } : {}),
    };
  } finally {
    agent?.destroy();
    await qmp?.close();
    await lock.release();
  }
}

/**
 * Backs up each base and commits each overlay back once its base is read (while the next disk
 * is read). Every overlay is committed, whatever fails. Commit failures are thrown after all
 * commits were tried; send failures are returned.
 */
async function sendAndCommit(
  repo: Repository,
  qmp: QmpClient,
  vm: string,
  snapshot: LiveSnapshot,
  request: BackupVmRequest,
  options: BackupVmOptions,
  recoveryStep: string,
  plans: ReadonlyMap<OverlayTarget, BitmapChainPlan>,
): Promise<{ reports: LiveDiskReport[]; failures: VmBackupFailure[] }> {
  const commits = new Map<OverlayTarget, Promise<CommitResult>>();
  const startCommit = (t: OverlayTarget): void => {
    if (commits.has(t)) return;
    const p = commitOverlay(qmp, t, recoveryStep, { onReady: async () => options.onPhase?.('commit-ready', t.label) });
    p.catch(() => undefined);
    commits.set(t, p);
  };
  const done = new Map<OverlayTarget, DiskBackupReport>();
  const failures: VmBackupFailure[] = [];
  // Each disk's chain is put in order once its base is writable again (after its commit): QEMU
  // cannot remove a persistent bitmap from the read-only base.
  const outcomes = new Map<OverlayTarget, ChainOutcome>();
  try {
    await options.onPhase?.('snapshot-taken');
    for (const t of snapshot.targets) {
      if (options.signal?.aborted || snapshot.thawError) break;
      const plan = plans.get(t);
      const tracked = plan ? await trackedReadFor(qmp, plan, t, request.qmpSocket, options) : undefined;
      const r = await backupFrozenBase(repo, { path: t.baseFile, format: t.baseFormat, diskId: `${vm}/${t.disk.id}`, vm, blockSize: request.blockSize, tracked }, options);
      if (r && 'report' in r) done.set(t, r.report);
      else if (r) failures.push(r.failure);
      outcomes.set(t, r && 'report' in r ? 'published' : r && r.failure.code === 'TRACKING_MISMATCH' ? 'mismatch' : 'failed');
      startCommit(t);
      await options.onPhase?.('disk-scanned', t.label);
    }
  } finally {
    for (const t of snapshot.targets) startCommit(t);
  }

  try {
    const reports = await collectCommits(snapshot.targets, commits, done, snapshot.snapshotAt, recoveryStep, options.onWarning);
    return { reports, failures };
  } finally {
    for (const t of snapshot.targets) {
      const plan = plans.get(t);
      if (!plan) continue;
      try {
        await finishBitmapChain(qmp, plan, outcomes.get(t) ?? 'failed');
      } catch (err) {
        // The next run cleans the chain with the repository known: a delay, never a wrong read.
        options.onWarning?.(`disk ${plan.diskId}: its tracking bitmaps could not be put in order (${err instanceof Error ? err.message : String(err)}); the next run does it`);
      }
    }
  }
}

/**
 * The tracked read of one disk, once the snapshot's transaction ran: the read copy's dirty map
 * for a bitmap decision (the export is gone again when this returns), else a full read. Never
 * throws: a tracker that cannot be read means a full read, with a warning.
 */
async function trackedReadFor(qmp: QmpClient, plan: BitmapChainPlan, t: OverlayTarget, qmpSocket: string, options: BackupVmOptions): Promise<TrackedRead> {
  let decision: ScanDecision = plan.decision;
  let dirty: DirtyExtent[] | undefined;
  let nextExists = false;
  try {
    const present = new Set((await listDirtyBitmaps(qmp, plan.node)).map((b) => b.name));
    nextExists = present.has(plan.next);
    if (decision.scan === 'bitmap') {
      if (plan.copy === undefined || !present.has(plan.copy)) throw new Error(`its read copy ${plan.copy ?? ''} is not there after the snapshot`);
      dirty = await readChainDirtyExtents(qmp, plan, nbdSocketFor(qmpSocket), async () => options.onPhase?.('bitmap-exported', t.label));
    }
  } catch (err) {
    if (decision.scan === 'bitmap') decision = { scan: 'full', reason: 'bitmap-unusable' };
    dirty = undefined;
    options.onWarning?.(`disk ${plan.diskId}: its dirty bitmap could not be read (${err instanceof Error ? err.message : String(err)}); the disk is read in full`);
  }
  return trackedReadOf(plan, decision, dirty, nextExists);
}

async function vmNameOf(qmp: QmpClient, given: string | undefined): Promise<string> {
  if (given !== undefined) {
    const problem = vmNameProblem(given);
    if (problem !== undefined) throw new BlockrepError('INVALID_DISK_ID', `--vm ${JSON.stringify(given.slice(0, 240))} cannot be the first part of a disk id: ${problem}`);
    return given;
  }
  const { name } = await qmp.execute('query-name', undefined, z.object({ name: z.string().optional() }));
  if (name === undefined || name === '') {
    throw new BlockrepError('USAGE', 'the VM has no name (QEMU was started without -name): give one with --vm NAME; it is the first part of its disk ids');
  }
  if (vmNameProblem(name) !== undefined) throw new BlockrepError('USAGE', `the VM's name ${JSON.stringify(name)} cannot be part of a disk id: give another with --vm NAME`);
  return name;
}

/** The disks to back up: all of them, or those `wanted` names by id, device or node (`vm/` prefix allowed). */
export function selectDisks(all: VmDisk[], vm: string, wanted: string[] | undefined): VmDisk[] {
  if (all.length === 0) throw new BlockrepError('USAGE', 'the VM has no writable disk to back up');
  if (wanted === undefined || wanted.length === 0) return all;
  const picked: VmDisk[] = [];
  for (const w of wanted) {
    const id = w.startsWith(`${vm}/`) ? w.slice(vm.length + 1) : w;
    const d = all.find((x) => x.id === id || x.device === id || x.node === id);
    if (!d) throw new BlockrepError('USAGE', `the VM has no disk ${JSON.stringify(w)}; its disks: ${all.map((x) => x.id).join(', ')}`);
    if (!picked.includes(d)) picked.push(d);
  }
  return picked;
}
