import { openRepository, type OpenRepositoryOptions, type Repository } from '../repository/index.js';
import { BlockrepError, toBlockrepError } from '../shared/index.js';
import { backupDomain, backupImage, backupVm, pruneVersions } from '../app/index.js';
import type { ImageVmJob, JobConfig, LibvirtVmJob, LiveVmJob, VmJob } from '../config/index.js';
import { checkImageVm, checkLibvirtVm, checkLiveVm, checkSocket, creatable, type CheckTimeouts } from './dry-run-checks.js';
import type { FailedDiskReport, OkDiskReport, RunEvent, RunReport, VmRunReport } from './run-report.js';

/**
 * `blockrep run`: backs up every VM of a job configuration into one repository, a bounded
 * number at a time. A VM that fails is reported and never stops the others; an interrupt
 * stops starting VMs and lets the running ones clean up (backupVm thaws and commits back on
 * every path). With a retention policy, each VM's disks are pruned right after their new
 * versions are published. Never prints: events go to a callback, the result is data.
 */

export interface RunJobsOptions {
  /** Only these VMs (by name); USAGE for a name the config does not have. */
  only?: string[];
  dryRun?: boolean;
  /** Overrides the config's `parallel`. */
  parallel?: number;
  signal?: AbortSignal;
  onEvent?: (event: RunEvent) => void;
  /** Scan threads per backup (tests). */
  workers?: number;
  /** For tests: shorter waits on QMP and the agent. */
  timeouts?: CheckTimeouts;
  now?: () => Date;
  /** An encrypted repository's passphrase, asked only if it is encrypted. */
  passphrase?: () => Promise<string>;
}

/** A URL without user:password@, query or fragment, for logs and reports. */
export function redactLocation(location: string): string {
  if (!/^https?:\/\//i.test(location)) return location;
  try {
    const u = new URL(location);
    return `${u.protocol}//${u.host}${u.pathname === '/' ? '' : u.pathname}`;
  } catch {
    return location.replace(/\/\/[^/@]*@/, '//');
  }
}

export function selectVms(config: JobConfig, only: string[] | undefined): VmJob[] {
  if (only === undefined || only.length === 0) return config.vms;
  const names = config.vms.map((v) => v.name);
  for (const name of only) {
    if (!names.includes(name)) {
      throw new BlockrepError('USAGE', `--only ${name}: ${config.file} has no VM of that name; its VMs: ${names.join(', ')}`);
    }
  }
  return config.vms.filter((v) => only.includes(v.name));
}

export async function runJobs(config: JobConfig, options: RunJobsOptions = {}): Promise<RunReport> {
  const started = Date.now();
  const now = options.now ?? (() => new Date());
  const dryRun = options.dryRun ?? false;
  const selected = selectVms(config, options.only);
  const parallel = Math.max(1, Math.min(options.parallel ?? config.parallel, selected.length || 1));
  const location = redactLocation(config.repository.location);
  const emit = (e: Omit<RunEvent, 'at'>): void => {
    try {
      options.onEvent?.({ at: Date.now(), ...e });
    } catch {
      // a log that cannot be written must not stop a backup (or its clean-up)
    }
  };
  emit({
    level: 'info',
    event: 'run-start',
    message: `${dryRun ? 'checking' : 'backing up'} ${selected.length} VM(s) from ${config.file} into ${location}, ${parallel} at a time`,
    data: { vms: selected.map((v) => v.name), parallel, dryRun, repository: location },
  });

  const reports: Array<VmRunReport | undefined> = selected.map(() => undefined);
  const repository: RunReport['repository'] = { location, status: 'ok' };
  let repo: Repository | undefined;
  let requests: Record<string, number> | undefined;
  const repoOptions: OpenRepositoryOptions = {
    create: !dryRun,
    ...(config.repository.tokenFile !== undefined ? { tokenFile: config.repository.tokenFile } : {}),
    ...(config.repository.cacert !== undefined ? { cacert: config.repository.cacert } : {}),
    ...(config.repository.s3Endpoint !== undefined ? { s3Endpoint: config.repository.s3Endpoint } : {}),
    ...(config.repository.bwlimit !== undefined ? { bwlimit: config.repository.bwlimit } : {}),
    ...(options.passphrase ? { passphrase: options.passphrase } : {}),
    ...(config.repository.syncLevel !== undefined ? { syncLevel: config.repository.syncLevel } : {}),
  };
  try {
    // One repository for the whole run: one connection pool and one bandwidth limit shared by
    // every VM, as they share the link.
    repo = await openRepository(config.repository.location, repoOptions);
    emit({ level: 'info', event: 'repository', message: `repository ${location} opened${dryRun ? ' (access accepted)' : ''}` });
  } catch (err) {
    const e = toBlockrepError(err);
    if (dryRun && e.code === 'REPO_NOT_FOUND' && !/^(https?|s3):\/\//i.test(config.repository.location) && (await creatable(config.repository.location))) {
      repository.note = 'no repository there yet: the first run creates it';
      emit({ level: 'info', event: 'repository', message: `repository ${location}: ${repository.note}` });
    } else {
      repository.status = 'failed';
      repository.code = e.code;
      repository.message = e.message;
      emit({ level: 'error', event: 'repository', code: e.code, message: `repository ${location}: ${e.message}` });
    }
  }

  try {
    if (repository.status === 'ok') {
      const queue = selected.map((vm, i) => ({ vm, i }));
      const worker = async (): Promise<void> => {
        for (;;) {
          if (options.signal?.aborted) return;
          const next = queue.shift();
          if (!next) return;
          reports[next.i] = await runOne(repo, next.vm, options, dryRun, emit, now);
        }
      };
      await Promise.all(Array.from({ length: parallel }, () => worker()));
    }
  } finally {
    requests = repo?.requestCounts();
    await repo?.backend.close().catch(() => undefined);
  }

  const vms = selected.map((vm, i): VmRunReport => {
    const r = reports[i];
    if (r) return r;
    const why = repository.status === 'failed' ? `not started: the repository could not be opened (${repository.code})` : 'not started: the run was interrupted';
    emit({ level: 'warn', event: 'vm-skipped', vm: vm.name, message: `VM ${vm.name} ${why}` });
    return { vm: vm.name, kind: vm.kind, status: 'not-started', where: vm.where(), message: why, durationMs: 0, disks: [], warnings: [] };
  });
  const okDisks = vms.flatMap((v) => v.disks.filter((d): d is OkDiskReport => d.status === 'ok'));
  const summary = {
    vms: vms.length,
    ok: vms.filter((v) => v.status === 'ok').length,
    failed: vms.filter((v) => v.status === 'failed').length,
    notStarted: vms.filter((v) => v.status === 'not-started').length,
    disks: okDisks.length,
    changedBlocks: okDisks.reduce((s, d) => s + d.changedBlocks, 0),
    bytesSent: okDisks.reduce((s, d) => s + d.bytesSent, 0),
  };
  const interrupted = options.signal?.aborted ?? false;
  const report: RunReport = {
    ok: repository.status === 'ok' && summary.ok === summary.vms,
    dryRun,
    interrupted,
    config: config.file,
    startedAt: new Date(started).toISOString(),
    durationMs: Date.now() - started,
    parallel,
    repository,
    vms,
    summary,
    ...(requests ? { requests } : {}),
  };
  emit({
    level: report.ok ? 'info' : 'error',
    event: 'run-done',
    message: `${dryRun ? 'checked' : 'done'}: ${summary.ok} of ${summary.vms} VM(s) ok, ${summary.failed} failed${summary.notStarted > 0 ? `, ${summary.notStarted} not started` : ''}${interrupted ? ' (interrupted)' : ''}`,
    data: { ...summary, durationMs: report.durationMs },
  });
  return report;
}

type Emit = (e: Omit<RunEvent, 'at'>) => void;

async function runOne(repo: Repository | undefined, vm: VmJob, options: RunJobsOptions, dryRun: boolean, emit: Emit, now: () => Date): Promise<VmRunReport> {
  const started = Date.now();
  const report: VmRunReport = { vm: vm.name, kind: vm.kind, status: 'ok', where: vm.where(), startedAt: new Date(started).toISOString(), durationMs: 0, disks: [], warnings: [] };
  const warn = (message: string): void => {
    report.warnings.push(message);
    emit({ level: 'warn', event: 'warning', vm: vm.name, message: `${vm.name}: ${message}` });
  };
  emit({
    level: 'info',
    event: 'vm-start',
    vm: vm.name,
    message: `${vm.name}: ${dryRun ? 'checking' : vm.kind === 'image' ? 'image backup' : 'live backup'} (${vm.kind === 'live' ? `qmp ${vm.qmpSocket}` : vm.kind === 'libvirt' ? `libvirt domain ${vm.domain}` : `${vm.images.length} image(s)`})`,
  });
  try {
    if (dryRun) {
      report.checks = vm.kind === 'live' ? await checkLiveVm(repo, vm, options) : vm.kind === 'libvirt' ? await checkLibvirtVm(vm) : await checkImageVm(repo, vm);
      for (const c of report.checks) {
        emit({ level: c.status === 'ok' ? 'info' : c.status === 'warning' ? 'warn' : 'error', event: 'check', vm: vm.name, message: `${vm.name}: ${c.check}: ${c.message}`, ...(c.code ? { code: c.code } : {}) });
      }
      const failed = report.checks.find((c) => c.status === 'failed');
      if (failed) {
        report.status = 'failed';
        report.code = failed.code ?? 'INTERNAL';
        report.message = failed.message;
      }
    } else {
      if (!repo) throw new BlockrepError('INTERNAL', 'no repository');
      if (vm.kind === 'live') await backupLiveVm(repo, vm, options, report, warn, emit);
      else if (vm.kind === 'libvirt') await backupLibvirtVm(repo, vm, options, report, warn);
      else await backupImageVm(repo, vm, options, report, warn);
      for (const d of report.disks) {
        if (d.status === 'ok') {
          emit({
            level: 'info',
            event: 'disk-done',
            vm: vm.name,
            disk: d.disk,
            message: `${d.disk}: version ${d.version}, ${d.changedBlocks} of ${d.blocks} blocks changed, ${d.bytesSent} bytes sent, ${d.durationMs} ms`,
            data: { version: d.version, changedBlocks: d.changedBlocks, blocks: d.blocks, bytesRead: d.bytesRead, bytesSent: d.bytesSent, durationMs: d.durationMs, scan: d.scan, ...(d.scanReason !== undefined ? { scanReason: d.scanReason } : {}), ...(d.overlayMs !== undefined ? { overlayMs: d.overlayMs } : {}) },
          });
        } else {
          emit({ level: 'error', event: 'disk-failed', vm: vm.name, disk: d.disk, code: d.code, message: `${d.disk}: ${d.code}: ${d.message}` });
        }
      }
      const failedDisk = report.disks.find((d): d is FailedDiskReport => d.status === 'failed');
      if (failedDisk) {
        report.status = 'failed';
        report.code = failedDisk.code;
        report.message = `disk ${failedDisk.disk}: ${failedDisk.message}`;
      }
      const published = report.disks.filter((d) => d.status === 'ok').map((d) => d.disk);
      if (vm.retention && published.length > 0 && !options.signal?.aborted) {
        try {
          const pruned = await pruneVersions(repo, { disks: published, policy: vm.retention, now: now() });
          report.retention = { status: 'ok', disks: published, report: pruned };
          emit({
            level: 'info',
            event: 'prune-done',
            vm: vm.name,
            message: `${vm.name}: retention kept ${pruned.versionsKept} version(s) and removed ${pruned.versionsRemoved} of ${published.join(', ')}`,
            data: { versionsKept: pruned.versionsKept, versionsRemoved: pruned.versionsRemoved, disksSkipped: pruned.disksSkipped },
          });
          for (const d of pruned.disks) if (d.skipped) warn(`retention skipped ${d.disk}: ${d.skipped.message}`);
        } catch (err) {
          const e = toBlockrepError(err);
          report.retention = { status: 'failed', disks: published, code: e.code, message: e.message };
          emit({ level: 'error', event: 'prune-failed', vm: vm.name, code: e.code, message: `${vm.name}: retention failed: ${e.message}` });
          if (report.status === 'ok') {
            report.status = 'failed';
            report.code = e.code;
            report.message = `its versions were published, but retention failed: ${e.message}`;
          }
        }
      }
    }
  } catch (err) {
    const e = toBlockrepError(err, options.signal?.aborted);
    report.status = 'failed';
    report.code = e.code;
    report.message = e.message;
  }
  report.durationMs = Date.now() - started;
  if (report.status === 'ok') {
    emit({
      level: 'info',
      event: 'vm-done',
      vm: vm.name,
      message: `${vm.name}: ${dryRun ? 'ready' : 'ok'}, ${report.durationMs} ms${report.frozenMs !== undefined ? `, frozen ${report.frozenMs} ms` : ''}`,
      data: { durationMs: report.durationMs, ...(report.frozenMs !== undefined ? { frozenMs: report.frozenMs } : {}) },
    });
  } else {
    emit({ level: 'error', event: 'vm-failed', vm: vm.name, ...(report.code ? { code: report.code } : {}), message: `${vm.name}: failed: ${report.message}` });
  }
  return report;
}

async function backupLiveVm(repo: Repository, vm: LiveVmJob, options: RunJobsOptions, report: VmRunReport, warn: (m: string) => void, emit: Emit): Promise<void> {
  await checkSocket(vm.qmpSocket, vm.where('qmp'), 'QMP_UNAVAILABLE', 'QMP');
  const r = await backupVm(
    repo,
    {
      qmpSocket: vm.qmpSocket,
      ...(vm.qgaSocket !== undefined ? { qgaSocket: vm.qgaSocket } : {}),
      vmName: vm.name,
      ...(vm.disks ? { disks: vm.disks } : {}),
      ...(vm.blockSize !== undefined ? { blockSize: vm.blockSize } : {}),
      quiesce: vm.quiesce,
      ...(vm.hooks ? { hooks: vm.hooks } : {}),
      ...(vm.fullScan !== undefined ? { fullScan: vm.fullScan } : {}),
      ...(vm.fullScanEveryMs !== undefined ? { fullScanEveryMs: vm.fullScanEveryMs } : {}),
    },
    {
      compress: vm.compress,
      onWarning: warn,
      onHook: (h) => {
        // Results land in the report even when the backup fails afterwards.
        (report.hooks ??= []).push(h);
        emit({
          level: h.status === 'ok' ? 'info' : 'warn',
          event: 'hook',
          vm: vm.name,
          message: `${vm.name}: host hook ${h.phase} (${h.command}): ${h.status === 'ok' ? 'ok' : h.message ?? h.status}, ${h.durationMs} ms`,
          data: { phase: h.phase, status: h.status, durationMs: h.durationMs, ...(h.exitCode !== undefined ? { exitCode: h.exitCode } : {}) },
        });
      },
      ...(options.signal ? { signal: options.signal } : {}),
      ...(options.workers !== undefined ? { workers: options.workers } : {}),
      ...(options.timeouts ? { timeouts: options.timeouts } : {}),
    },
  );
  report.quiesced = r.quiesced;
  if (r.freezeFailure) report.freezeFailure = r.freezeFailure;
  if (r.frozenMs !== undefined) report.frozenMs = r.frozenMs;
  report.snapshot = r.snapshot;
  if (r.skippedDisks.length > 0) report.skippedDisks = r.skippedDisks;
  report.disks = [
    ...r.disks.map((d): OkDiskReport => ({ status: 'ok', ...d })),
    ...r.failures.map((f): FailedDiskReport => ({ status: 'failed', ...f })),
  ];
}

async function backupLibvirtVm(repo: Repository, vm: LibvirtVmJob, options: RunJobsOptions, report: VmRunReport, warn: (m: string) => void): Promise<void> {
  const r = await backupDomain(
    repo,
    {
      domain: vm.domain,
      vmName: vm.name,
      ...(vm.connect !== undefined ? { connect: vm.connect } : {}),
      ...(vm.disks ? { disks: vm.disks } : {}),
      ...(vm.blockSize !== undefined ? { blockSize: vm.blockSize } : {}),
      quiesce: vm.quiesce,
      ...(vm.method !== undefined ? { method: vm.method } : {}),
      ...(vm.fullScan !== undefined ? { fullScan: vm.fullScan } : {}),
      ...(vm.fullScanEveryMs !== undefined ? { fullScanEveryMs: vm.fullScanEveryMs } : {}),
    },
    {
      compress: vm.compress,
      onWarning: warn,
      ...(options.signal ? { signal: options.signal } : {}),
      ...(options.workers !== undefined ? { workers: options.workers } : {}),
    },
  );
  report.method = r.method;
  report.methodReason = r.methodReason;
  report.quiesced = r.quiesced;
  if (r.snapshot) report.snapshot = r.snapshot;
  if (r.frozenMs !== undefined) report.frozenMs = r.frozenMs;
  if (r.checkpoints) report.checkpoints = r.checkpoints;
  if (r.skippedDisks.length > 0) report.skippedDisks = r.skippedDisks;
  report.disks = [
    ...r.disks.map((d): OkDiskReport => ({ status: 'ok', ...d })),
    ...r.failures.map((f): FailedDiskReport => ({ status: 'failed', ...f })),
  ];
}

async function backupImageVm(repo: Repository, vm: ImageVmJob, options: RunJobsOptions, report: VmRunReport, warn: (message: string) => void): Promise<void> {
  for (const img of vm.images) {
    if (options.signal?.aborted) throw new BlockrepError('INTERRUPTED', `interrupted before ${img.diskId}; nothing half-done was published`);
    try {
      const d = await backupImage(
        repo,
        {
          path: img.path,
          diskId: img.diskId,
          source: { kind: 'image', vm: vm.name },
          ...(img.format ? { format: img.format } : {}),
          ...(vm.blockSize !== undefined ? { blockSize: vm.blockSize } : {}),
        },
        { compress: vm.compress, onWarning: warn, ...(options.signal ? { signal: options.signal } : {}), ...(options.workers !== undefined ? { workers: options.workers } : {}) },
      );
      report.disks.push({ status: 'ok', ...d });
    } catch (err) {
      const e = toBlockrepError(err, options.signal?.aborted);
      const message = e.code === 'IMAGE_NOT_FOUND' || e.code === 'IMAGE_UNREADABLE' ? `${img.where}: ${e.message}` : e.message;
      report.disks.push({ status: 'failed', disk: img.diskId, path: img.path, code: e.code, message });
    }
  }
}
