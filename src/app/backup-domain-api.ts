import { join } from 'node:path';
import {
  backupWorkDir,
  backupXml,
  beginBackup,
  beginBackupAndThaw,
  checkpointChain,
  checkpointPrefix,
  checkpointXml,
  deleteCheckpoint,
  endBackupJob,
  listCheckpoints,
  newCheckpointName,
  prepareBackupWorkDir,
  readBackupJob,
  readCheckpoint,
  removeBackupWorkDir,
  type BackupJobDisk,
  type CheckpointInfo,
  type DomainDisk,
  type LibvirtDomain,
} from '../libvirt/index.js';
import type { Repository } from '../repository/index.js';
import { BlockrepError, isBlockrepError, toBlockrepError } from '../shared/index.js';
import type { DiskBackupReport } from './backup-image.js';
import { backupFrozenBase, type VmBackupFailure } from './backup-frozen-base.js';
import { DEFAULT_FULL_SCAN_EVERY_MS, decideScan, latestVersionFacts, type LatestVersionFacts, type ScanDecision } from './scan-plan.js';
import { readDirtyExtents } from '../nbd/index.js';

/**
 * Method `backup-api` of a libvirt domain: libvirt's pull-mode backup. Freeze (when asked and
 * possible), `backup-begin` with a new checkpoint of blockrep's (qcow2 disks only) and each disk
 * full or incremental from the checkpoint its latest version in this repository recorded (when
 * decideScan trusts it), thaw at once; read each disk's NBD export (for an incremental disk only
 * the dirty extents, plus a sample); end the job (domjobabort) on every path; then delete this
 * repository's older checkpoints that only published disks needed (or, when nothing was
 * published, the new checkpoint: libvirt merges it into the older one, a superset). The domain's
 * images are never switched. Never prints.
 */

export interface ApiBackupContext {
  domain: LibvirtDomain;
  connect: string | undefined;
  vm: string;
  /** Every disk of the live definition (the backup and checkpoint XML name them all). */
  allDisks: DomainDisk[];
  selected: DomainDisk[];
  blockSize: number | undefined;
  quiesce: { wanted: boolean; mode: 'auto' | 'require' | 'off' };
  fullScan: boolean;
  fullScanEveryMs: number | undefined;
  recoveryStep: string;
  warn: (message: string) => void;
  signal: AbortSignal | undefined;
  onPhase: ((phase: 'backup-begun' | 'disk-scanned', disk?: string) => void | Promise<void>) | undefined;
  backupOptions: Parameters<typeof backupFrozenBase>[2];
}

export interface ApiBackupResult {
  quiesced: boolean;
  /** freeze sent → thaw returned; undefined when the guest was not frozen. */
  frozenMs: number | undefined;
  backupJob: { freezeMs?: number; beginMs: number; thawMs?: number; frozenFilesystems?: number; jobMs: number };
  checkpoints: { created: string | undefined; deleted: string[]; kept: string[] };
  disks: DiskBackupReport[];
  failures: VmBackupFailure[];
}

interface DiskPlan {
  disk: DomainDisk;
  diskId: string;
  trackable: boolean;
  chain: string;
  latest: LatestVersionFacts | undefined;
  decision: ScanDecision;
  /** The checkpoint an incremental read starts from. */
  from: string | undefined;
}

export async function backupDomainThroughApi(repo: Repository, ctx: ApiBackupContext): Promise<ApiBackupResult> {
  const { domain } = ctx;
  const repositoryId = repo.config.id;
  const prefix = checkpointPrefix(repositoryId);
  const [uuid, all] = await Promise.all([domain.uuid(), listCheckpoints(domain)]);
  const ours = all.filter((n) => n.startsWith(prefix)).sort();
  const infos = new Map<string, CheckpointInfo>();
  const info = async (name: string): Promise<CheckpointInfo> => {
    let i = infos.get(name);
    if (!i) {
      i = await readCheckpoint(domain, name);
      infos.set(name, i);
    }
    return i;
  };

  // 1. Per disk: may its latest version's checkpoint be trusted?
  const nowMs = Date.now();
  const plans: DiskPlan[] = [];
  for (const d of ctx.selected) {
    const diskId = `${ctx.vm}/${d.target}`;
    const trackable = d.format === 'qcow2';
    const chain = checkpointChain(repositoryId, diskId, uuid);
    const latest = await latestVersionFacts(repo, diskId);
    let decision: ScanDecision;
    let from: string | undefined;
    if (!trackable) {
      decision = { scan: 'full', reason: 'not-trackable' };
    } else {
      const recorded = latest?.tracking?.method === 'libvirt-checkpoint' ? latest.tracking.point : undefined;
      const point = recorded !== undefined && ours.includes(recorded) && (await info(recorded)).bitmapDisks.includes(d.target) ? recorded : undefined;
      decision = decideScan(latest, { method: 'libvirt-checkpoint', chain, point }, { fullScan: ctx.fullScan, fullScanEveryMs: ctx.fullScanEveryMs ?? DEFAULT_FULL_SCAN_EVERY_MS, nowMs });
      if (decision.scan === 'bitmap') from = point;
    }
    plans.push({ disk: d, diskId, trackable, chain, latest, decision, from });
  }

  // 2. The job: freeze, begin (with the next checkpoint), thaw.
  const tracked = plans.filter((p) => p.trackable);
  const created = tracked.length > 0 ? newCheckpointName(repositoryId) : undefined;
  const workDir = await backupWorkDir(ctx.connect, domain.name);
  const socket = join(workDir, 'nbd.sock');
  await prepareBackupWorkDir(workDir, ctx.selected[0]!.source!);
  const others = ctx.allDisks.filter((d) => !ctx.selected.includes(d)).map((d) => d.target);
  const checkpoint = created !== undefined ? checkpointXml(created, ctx.allDisks.map((d) => ({ target: d.target, bitmap: tracked.some((p) => p.disk === d) }))) : undefined;
  const jobDisks = (): BackupJobDisk[] => plans.map((p) => ({ target: p.disk.target, mode: p.from !== undefined ? 'incremental' : 'full', checkpoint: p.from }));

  let started: Awaited<ReturnType<typeof startJob>>;
  try {
    try {
      started = await startJob(ctx, workDir, backupXml(socket, workDir, jobDisks(), others), checkpoint);
    } catch (err) {
      const incremental = plans.filter((p) => p.from !== undefined);
      if (incremental.length === 0 || !isBlockrepError(err) || err.code !== 'LIBVIRT_ERROR') throw err;
      // A checkpoint libvirt cannot use (its bitmap inconsistent after a crash of QEMU): read those disks whole.
      ctx.warn(`libvirt refused an incremental backup from ${incremental.map((p) => `${p.from} (${p.disk.target})`).join(', ')}: ${err.message}; reading those disks in full`);
      for (const p of incremental) {
        p.from = undefined;
        p.decision = { scan: 'full', reason: 'bitmap-inconsistent' };
      }
      started = await startJob(ctx, workDir, backupXml(socket, workDir, jobDisks(), others), checkpoint);
    }
  } catch (err) {
    await removeBackupWorkDir(workDir).catch(() => undefined);
    throw err;
  }
  const jobStarted = Date.now();

  // 3. Read each export; end the job and settle the checkpoints whatever happens.
  const done = new Map<DiskPlan, DiskBackupReport>();
  const failures: VmBackupFailure[] = [];
  let jobMs = 0;
  const settled: ApiBackupResult['checkpoints'] = { created, deleted: [], kept: [] };
  try {
    await ctx.onPhase?.('backup-begun');
    const view = await readBackupJob(domain);
    for (const p of plans) {
      if (ctx.signal?.aborted) break;
      const exp = view?.disks.find((x) => x.target === p.disk.target);
      const exportName = exp?.exportName ?? p.disk.target;
      let dirty: Array<{ offset: number; length: number }> | undefined;
      if (p.decision.scan === 'bitmap') {
        try {
          dirty = await readDirtyExtents({ kind: 'unix', path: socket }, exportName, exp?.bitmap ?? `backup-${p.disk.target}`);
        } catch (err) {
          const e = toBlockrepError(err);
          failures.push({ disk: p.diskId, path: p.disk.source ?? p.disk.target, code: e.code, message: `the dirty extents of ${p.disk.target} could not be read: ${e.message}` });
          continue;
        }
      }
      const r = await backupFrozenBase(
        repo,
        {
          path: p.disk.source ?? p.disk.target,
          format: p.disk.format as 'raw' | 'qcow2',
          diskId: p.diskId,
          vm: ctx.vm,
          blockSize: ctx.blockSize,
          nbd: { address: { kind: 'unix', path: socket }, exportName },
          tracked: {
            basedOn: p.latest?.versionId,
            decision: p.decision,
            ...(dirty ? { dirty } : {}),
            record: p.trackable && created !== undefined ? { method: 'libvirt-checkpoint', chain: p.chain, point: created } : undefined,
          },
        },
        ctx.backupOptions,
      );
      if (r && 'report' in r) done.set(p, r.report);
      else if (r) failures.push(r.failure);
      await ctx.onPhase?.('disk-scanned', p.disk.target);
    }
  } finally {
    let endError: unknown;
    try {
      await endBackupJob(domain);
    } catch (err) {
      endError = err;
    }
    jobMs = Date.now() - jobStarted;
    if (endError === undefined) await removeBackupWorkDir(workDir).catch(() => undefined);
    await settleCheckpoints(ctx, plans, done, created, ours, info, settled);
    if (endError !== undefined) {
      const e = toBlockrepError(endError);
      // eslint-disable-next-line no-unsafe-finally
      throw new BlockrepError('LIBVIRT_ERROR', `the backup job on domain ${domain.name} could not be ended (${e.message}); run: ${ctx.recoveryStep}`, { cause: e, details: { recovery: ctx.recoveryStep } });
    }
  }
  return {
    quiesced: started.quiesced,
    frozenMs: started.frozenMs,
    backupJob: { ...started.times, jobMs },
    checkpoints: settled,
    disks: plans.flatMap((p) => (done.has(p) ? [done.get(p)!] : [])),
    failures,
  };
}

/**
 * Keeps the new checkpoint when some disk's published version recorded it, else deletes it
 * (its writes merge into the older checkpoint, which then covers them too). Deletes older
 * checkpoints of this repository whose tracked disks all have a newer version now.
 */
async function settleCheckpoints(
  ctx: ApiBackupContext,
  plans: DiskPlan[],
  done: Map<DiskPlan, DiskBackupReport>,
  created: string | undefined,
  ours: string[],
  info: (name: string) => Promise<CheckpointInfo>,
  out: ApiBackupResult['checkpoints'],
): Promise<void> {
  if (created === undefined) return;
  const published = plans.filter((p) => p.trackable && done.has(p)).map((p) => p.disk.target);
  const remove = async (name: string): Promise<void> => {
    try {
      await deleteCheckpoint(ctx.domain, name);
      out.deleted.push(name);
    } catch (err) {
      out.kept.push(name);
      ctx.warn(`checkpoint ${name} of domain ${ctx.domain.name} could not be deleted (${err instanceof Error ? err.message : String(err)}); the next backup tries again`);
    }
  };
  if (published.length === 0) {
    await remove(created);
    return;
  }
  for (const name of ours) {
    let i: CheckpointInfo;
    try {
      i = await info(name);
    } catch {
      out.kept.push(name);
      continue;
    }
    if (i.bitmapDisks.every((t) => published.includes(t))) await remove(name);
    else out.kept.push(name);
  }
}

async function startJob(
  ctx: ApiBackupContext,
  workDir: string,
  backup: string,
  checkpoint: string | undefined,
): Promise<{ quiesced: boolean; frozenMs: number | undefined; times: { freezeMs?: number; beginMs: number; thawMs?: number; frozenFilesystems?: number } }> {
  const { domain } = ctx;
  let frozen = false;
  let frozenFilesystems: number | undefined;
  const freezeStart = Date.now();
  let freezeMs: number | undefined;
  if (ctx.quiesce.wanted) {
    try {
      frozenFilesystems = await domain.freeze();
      frozen = true;
      freezeMs = Date.now() - freezeStart;
    } catch (err) {
      const e = toBlockrepError(err);
      // Frozen by someone else: not ours to thaw.
      if (e.code === 'RECOVERY_NEEDED') throw e;
      // A failed or timed-out freeze may still have frozen some filesystems.
      await domain.thaw().catch(() => undefined);
      const code = e.code === 'AGENT_UNAVAILABLE' ? 'AGENT_UNAVAILABLE' : 'FREEZE_FAILED';
      if (ctx.quiesce.mode === 'require') throw new BlockrepError(code, `the guest of domain ${domain.name} could not be frozen (${e.message}); nothing was changed`, { cause: e });
      ctx.warn(`the guest of domain ${domain.name} could not be frozen (${e.message}); going on without freezing it: the backup is crash-consistent only (use --require-quiesce to fail instead)`);
    }
  }
  const beginStart = Date.now();
  let beginMs = 0;
  let thawMs: number | undefined;
  if (!frozen) {
    await beginBackup(domain, workDir, backup, checkpoint);
    beginMs = Date.now() - beginStart;
  } else {
    // Begin and thaw in one virsh process: no process start inside the frozen window.
    let r: Awaited<ReturnType<typeof beginBackupAndThaw>> | undefined;
    let batchError: unknown;
    try {
      r = await beginBackupAndThaw(domain, workDir, backup, checkpoint);
    } catch (err) {
      batchError = err;
    }
    beginMs = Date.now() - beginStart;
    if (r?.thawed === undefined) {
      // virsh did not say it thawed (it failed, or timed out): thaw on its own, and say so if that fails too.
      const thawStart = Date.now();
      try {
        await domain.thaw();
      } catch (err) {
        throw new BlockrepError('THAW_FAILED', `the guest of domain ${domain.name} could not be thawed (${err instanceof Error ? err.message : String(err)}); it may still be frozen. Run: ${ctx.recoveryStep}`, { cause: err, details: { recovery: ctx.recoveryStep } });
      }
      thawMs = Date.now() - thawStart;
    }
    if (batchError !== undefined) throw batchError;
    if (!r!.begun) throw r!.beginError!;
  }
  return {
    quiesced: frozen,
    frozenMs: frozen ? Date.now() - freezeStart : undefined,
    times: { ...(freezeMs !== undefined ? { freezeMs } : {}), beginMs, ...(thawMs !== undefined ? { thawMs } : {}), ...(frozenFilesystems !== undefined ? { frozenFilesystems } : {}) },
  };
}
