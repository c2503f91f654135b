import type { Command } from 'commander';
import { backupImage, type DiskBackupReport, backupDomain, backupRunningDomains, DOMAIN_BACKUP_METHODS, type DomainBackupMethod, type DomainBackupReport, type DomainPhase, backupVm, type LivePhase, type VmBackupReport } from '../../app/index.js';
import type { ImageFormat } from '../../image/index.js';
import { openRepository } from '../../repository/index.js';
import { BlockrepError, toBlockrepError, assertDiskId, defaultDiskIdForImage, parseSize } from '../../shared/index.js';
import { addRepositoryOptions, repositoryOptionsFrom, type RepositoryCliOptions } from '../repository-options.js';
import { runCommand, type CommandContext, type CommandResult } from '../command-context.js';
import { EXIT_OK, exitCodeFor } from '../exit-codes.js';
import { backupText } from '../output/text-reports.js';
import { parseIntOption } from '../parse-options.js';

interface BackupOptions extends RepositoryCliOptions {
  disk?: string;
  blockSize?: string;
  format?: ImageFormat;
  json?: boolean;
  workers?: string;
  compress: boolean;
  qmp?: string;
  qga?: string;
  vm?: string;
  disks?: string;
  quiesce: boolean;
  fullScan?: boolean;
  requireQuiesce?: boolean;
  domain?: string;
  connect?: string;
  method?: string;
  allRunning?: boolean;
}

export function registerBackup(program: Command): void {
  addRepositoryOptions(program.command('backup'))
    .description(
      'back up disk images (raw or qcow2) into a repository, storing only the blocks that changed since their last version; ' +
        'with --domain, back up the disks of a running libvirt domain, with --qmp those of a QEMU VM, through a consistent live snapshot',
    )
    .argument('[image...]', 'image files or block devices to back up; each is one disk (not with --domain or --qmp)')
    .option('--disk <id>', 'disk id (only with a single image); default: the image file name without its extension')
    .option('--block-size <size>', "block size for change detection and storage, a power of two from 4K to 16M (default: the disk's current block size, 256K for a new disk)")
    .option('--format <format>', 'image format, raw or qcow2 (default: detected; give it for raw images a guest could write a qcow2 header into)')
    .option('--workers <n>', 'scan threads (default: up to 2)')
    .option('--no-compress', 'store chunks uncompressed')
    .option('--sync-level <level>', 'directory repository: how new chunks become durable before the version is published: filesystem (one syncfs of its file system, the default) or file (an fsync per chunk)')
    .option('--json', 'print one JSON object as the report')
    .option('--domain <name>', 'live VM: the name of a running libvirt domain; its disks are <domain>/<target> (vda, …)')
    .option('--all-running', 'live VMs: every running domain of the libvirt connection, one after the other, each as --domain would')
    .option('--connect <uri>', 'live VM: libvirt URI for --domain and --all-running (default: libvirt\'s default, qemu:///system for root)')
    .option(
      '--method <method>',
      'live VM: how to back up a libvirt domain: backup-api (libvirt\'s pull-mode backup, changed blocks through checkpoints of qcow2 disks, no overlay; libvirt 7.6+), snapshot (external snapshot, then block commit), or auto (backup-api when libvirt has it and a chosen disk is qcow2, else snapshot)',
      'auto',
    )
    .option('--qmp <socket>', "live VM: the unix socket of the running VM's QEMU monitor (QMP), for a VM libvirt does not manage")
    .option('--qga <socket>', 'live VM: the unix socket of its guest agent (default: found through QMP)')
    .option('--vm <name>', "live VM: its name in disk ids, <vm>/<drive or device id> (default: the domain's name, or QEMU's -name)")
    .option('--disks <list>', 'live VM: only these disks, comma-separated targets (--domain) or drive or device ids (--qmp) (default: every writable disk)')
    .option('--no-quiesce', 'live VM: do not freeze the guest filesystems (crash-consistent backup)')
    .option('--require-quiesce', 'live VM: fail when no guest agent answers, instead of going on without freezing')
    .option('--full-scan', 'live VM: read every block, whatever changed-block tracking says')
    .action(async (images: string[], opts: BackupOptions) => {
      await runCommand(Boolean(opts.json), async (ctx) => {
        if (opts.domain !== undefined && opts.qmp !== undefined) throw new BlockrepError('USAGE', 'give either --domain (a libvirt domain) or --qmp (a QEMU VM libvirt does not manage), not both');
        if (opts.allRunning) {
          if (opts.domain !== undefined || opts.qmp !== undefined) throw new BlockrepError('USAGE', 'give --all-running or --domain or --qmp, one of them');
          return backupLibvirtDomain(images, opts, ctx);
        }
        if (opts.domain !== undefined) return backupLibvirtDomain(images, opts, ctx);
        if (opts.connect !== undefined || opts.method !== 'auto') throw new BlockrepError('USAGE', '--connect and --method need --domain');
        if (opts.qmp !== undefined) return backupLiveVm(images, opts, ctx);
        if (opts.qga !== undefined || opts.vm !== undefined || opts.disks !== undefined || opts.requireQuiesce || !opts.quiesce || opts.fullScan) {
          throw new BlockrepError('USAGE', '--qga, --vm, --disks, --no-quiesce, --require-quiesce and --full-scan need --domain or --qmp (an image is always read whole)');
        }
        if (images.length === 0) throw new BlockrepError('USAGE', 'give the images to back up, or --domain NAME (libvirt) or --qmp SOCKET for a running VM');
        if (opts.disk !== undefined && images.length !== 1) throw new BlockrepError('USAGE', '--disk can only be given with a single image');
        if (opts.format !== undefined && opts.format !== 'raw' && opts.format !== 'qcow2') throw new BlockrepError('USAGE', `--format must be raw or qcow2, not ${opts.format}`);
        const blockSize = opts.blockSize === undefined ? undefined : parseSize(opts.blockSize, 'block size');
        const workers = opts.workers === undefined ? undefined : parseIntOption(opts.workers, '--workers', 0, 64);
        const jobs = images.map((path) => ({ path, diskId: assertDiskId(opts.disk ?? defaultDiskIdForImage(path)) }));
        const seen = new Set<string>();
        for (const j of jobs) {
          if (seen.has(j.diskId)) throw new BlockrepError('USAGE', `two images map to disk id ${j.diskId}; back them up separately with --disk`);
          seen.add(j.diskId);
        }
        const started = Date.now();
        const repo = await openRepository(opts.repo, repositoryOptionsFrom(opts, { create: true }));
        const disks: DiskBackupReport[] = [];
        const failures: Array<{ disk: string; path: string; code: string; message: string }> = [];
        const errors: BlockrepError[] = [];
        let firstExit = EXIT_OK;
        const warnings: string[] = [];
        const warn = (m: string): void => {
          warnings.push(m);
          process.stderr.write(`blockrep: warning: ${m}\n`);
        };
        for (const job of jobs) {
          if (ctx.signal.aborted) break;
          try {
            disks.push(
              await backupImage(
                repo,
                { path: job.path, diskId: job.diskId, ...(blockSize !== undefined ? { blockSize } : {}), ...(opts.format ? { format: opts.format } : {}) },
                { signal: ctx.signal, onProgress: ctx.onProgress, onWarning: warn, compress: opts.compress, ...(workers !== undefined ? { workers } : {}) },
              ),
            );
          } catch (err) {
            const e = toBlockrepError(err, ctx.signal.aborted);
            errors.push(e);
            failures.push({ disk: job.diskId, path: job.path, code: e.code, message: e.message });
            if (firstExit === EXIT_OK) firstExit = exitCodeFor(e.code);
          }
        }
        const durationMs = Date.now() - started;
        const first = failures[0];
        // One image, one failure: report it as the command's error.
        if (errors[0] && jobs.length === 1) throw errors[0];
        const requests = repo.requestCounts();
        return {
          exitCode: firstExit,
          json: {
            ok: failures.length === 0,
            durationMs,
            ...(first ? { code: first.code, message: first.message, failures } : {}),
            disks,
            ...(warnings.length > 0 ? { warnings } : {}),
            ...(requests ? { requests } : {}),
          },
          text: backupText(disks, failures, durationMs) + requestsText(requests),
        };
      });
    });
}

/** Phases a test can hold a live run at (BLOCKREP_TEST_HOLD=phase): it waits there until a signal. */
const HOLD_PHASES: readonly LivePhase[] = ['frozen', 'snapshot-taken', 'bitmap-exported', 'disk-scanned', 'commit-ready'];

async function backupLiveVm(images: string[], opts: BackupOptions, ctx: CommandContext): Promise<CommandResult> {
  if (images.length > 0) throw new BlockrepError('USAGE', 'give either images or --qmp, not both');
  if (opts.disk !== undefined || opts.format !== undefined) throw new BlockrepError('USAGE', '--disk and --format are for images; a live VM names its disks <vm>/<drive id> (see --vm)');
  if (!opts.quiesce && opts.requireQuiesce) throw new BlockrepError('USAGE', '--no-quiesce and --require-quiesce contradict each other');
  const blockSize = opts.blockSize === undefined ? undefined : parseSize(opts.blockSize, 'block size');
  const workers = opts.workers === undefined ? undefined : parseIntOption(opts.workers, '--workers', 0, 64);
  const disks = opts.disks === undefined ? undefined : opts.disks.split(',').map((d) => d.trim()).filter(Boolean);
  const hold = process.env.BLOCKREP_TEST_HOLD as LivePhase | undefined;
  if (hold !== undefined && !HOLD_PHASES.includes(hold)) throw new BlockrepError('USAGE', `BLOCKREP_TEST_HOLD must be one of ${HOLD_PHASES.join(', ')}`);
  const warn = (m: string): void => {
    process.stderr.write(`blockrep: warning: ${m}\n`);
  };
  const repo = await openRepository(opts.repo, repositoryOptionsFrom(opts, { create: true }));
  const report = await backupVm(
    repo,
    {
      qmpSocket: opts.qmp!,
      ...(opts.qga !== undefined ? { qgaSocket: opts.qga } : {}),
      ...(opts.vm !== undefined ? { vmName: opts.vm } : {}),
      ...(disks ? { disks } : {}),
      ...(blockSize !== undefined ? { blockSize } : {}),
      quiesce: !opts.quiesce ? 'off' : opts.requireQuiesce ? 'require' : 'auto',
      ...(opts.fullScan ? { fullScan: true } : {}),
    },
    {
      signal: ctx.signal,
      onProgress: ctx.onProgress,
      compress: opts.compress,
      ...(workers !== undefined ? { workers } : {}),
      onWarning: warn,
      ...(hold !== undefined ? { onPhase: holdAt<LivePhase>(hold, ctx.signal) } : {}),
    },
  );
  const first = report.failures[0];
  const requests = repo.requestCounts();
  return {
    exitCode: first ? exitCodeFor(first.code) : EXIT_OK,
    json: {
      ok: report.failures.length === 0,
      durationMs: report.durationMs,
      ...(report.frozenMs !== undefined ? { frozenMs: report.frozenMs } : {}),
      vm: report.vm,
      quiesced: report.quiesced,
      snapshot: report.snapshot,
      ...(report.freezeFailure ? { freezeFailure: report.freezeFailure } : {}),
      ...(first ? { code: first.code, message: first.message, failures: report.failures } : {}),
      ...(report.warnings.length > 0 ? { warnings: report.warnings } : {}),
      ...(report.skippedDisks.length > 0 ? { skippedDisks: report.skippedDisks } : {}),
      disks: report.disks,
      ...(requests ? { requests } : {}),
    },
    text: liveBackupText(report) + requestsText(requests),
  };
}

/** Phases a test can hold a libvirt run at (BLOCKREP_TEST_HOLD=phase). */
const DOMAIN_HOLD_PHASES: readonly DomainPhase[] = ['snapshot-taken', 'backup-begun', 'disk-scanned'];

async function backupLibvirtDomain(images: string[], opts: BackupOptions, ctx: CommandContext): Promise<CommandResult> {
  if (images.length > 0) throw new BlockrepError('USAGE', 'give either images or --domain, not both');
  if (opts.disk !== undefined || opts.format !== undefined) throw new BlockrepError('USAGE', '--disk and --format are for images; a libvirt domain names its disks <domain>/<target>');
  if (opts.qga !== undefined) throw new BlockrepError('USAGE', '--qga is for --qmp; libvirt reaches the guest agent itself');
  if (!opts.quiesce && opts.requireQuiesce) throw new BlockrepError('USAGE', '--no-quiesce and --require-quiesce contradict each other');
  const method = opts.method ?? 'auto';
  if (!(DOMAIN_BACKUP_METHODS as readonly string[]).includes(method)) throw new BlockrepError('USAGE', `--method must be one of ${DOMAIN_BACKUP_METHODS.join(', ')}, not ${method}`);
  const blockSize = opts.blockSize === undefined ? undefined : parseSize(opts.blockSize, 'block size');
  const workers = opts.workers === undefined ? undefined : parseIntOption(opts.workers, '--workers', 0, 64);
  const disks = opts.disks === undefined ? undefined : opts.disks.split(',').map((d) => d.trim()).filter(Boolean);
  const hold = process.env.BLOCKREP_TEST_HOLD as DomainPhase | undefined;
  if (hold !== undefined && !DOMAIN_HOLD_PHASES.includes(hold)) throw new BlockrepError('USAGE', `BLOCKREP_TEST_HOLD must be one of ${DOMAIN_HOLD_PHASES.join(', ')} with --domain`);
  if (opts.allRunning && (opts.vm !== undefined || disks !== undefined)) throw new BlockrepError('USAGE', '--vm and --disks name one domain; with --all-running every domain is backed up whole under its own name');
  const repo = await openRepository(opts.repo, repositoryOptionsFrom(opts, { create: true }));
  const request = {
    ...(opts.connect !== undefined ? { connect: opts.connect } : {}),
    method: method as DomainBackupMethod,
    ...(blockSize !== undefined ? { blockSize } : {}),
    quiesce: (!opts.quiesce ? 'off' : opts.requireQuiesce ? 'require' : 'auto') as 'off' | 'require' | 'auto',
    ...(opts.fullScan ? { fullScan: true } : {}),
  };
  const options = {
    signal: ctx.signal,
    onProgress: ctx.onProgress,
    compress: opts.compress,
    ...(workers !== undefined ? { workers } : {}),
    onWarning: (m: string) => {
      process.stderr.write(`blockrep: warning: ${m}\n`);
    },
    ...(hold !== undefined ? { onPhase: holdAt<DomainPhase>(hold, ctx.signal) } : {}),
  };
  if (opts.allRunning) {
    const all = await backupRunningDomains(repo, request, options);
    const failed = all.domains.find((d) => !d.ok);
    return {
      exitCode: failed && !failed.ok ? exitCodeFor(failed.code) : EXIT_OK,
      json: {
        ok: failed === undefined,
        durationMs: all.durationMs,
        ...(failed && !failed.ok ? { code: failed.code, message: `${failed.domain}: ${failed.message}` } : {}),
        domains: all.domains.map((d) => (d.ok ? domainJson(d.report) : { ok: false, domain: d.domain, code: d.code, message: d.message, ...(d.report ? { report: domainJson(d.report) } : {}) })),
      },
      text:
        all.domains.length === 0
          ? 'no running domain'
          : all.domains.map((d) => (d.ok ? domainBackupText(d.report) : `domain ${d.domain}: FAILED ${d.code}: ${d.message}`)).join('\n\n'),
    };
  }
  const report = await backupDomain(
    repo,
    {
      ...request,
      domain: opts.domain!,
      ...(opts.vm !== undefined ? { vmName: opts.vm } : {}),
      ...(disks ? { disks } : {}),
    },
    options,
  );
  const first = report.failures[0];
  return {
    exitCode: first ? exitCodeFor(first.code) : EXIT_OK,
    json: domainJson(report),
    text: domainBackupText(report),
  };
}

function domainJson(report: DomainBackupReport): Record<string, unknown> {
  const first = report.failures[0];
  return {
    ok: report.failures.length === 0,
    durationMs: report.durationMs,
    method: report.method,
    methodReason: report.methodReason,
    domain: report.domain,
    vm: report.vm,
    quiesced: report.quiesced,
    ...(report.snapshot ? { snapshot: report.snapshot } : {}),
    ...(report.frozenMs !== undefined ? { frozenMs: report.frozenMs } : {}),
    ...(report.backupJob ? { backupJob: report.backupJob } : {}),
    ...(report.checkpoints ? { checkpoints: report.checkpoints } : {}),
    ...(first ? { code: first.code, message: first.message, failures: report.failures } : {}),
    ...(report.warnings.length > 0 ? { warnings: report.warnings } : {}),
    ...(report.skippedDisks.length > 0 ? { skippedDisks: report.skippedDisks } : {}),
    disks: report.disks,
  };
}

function domainBackupText(r: DomainBackupReport): string {
  const lines = [backupText(r.disks, r.failures, r.durationMs)];
  lines.push(`domain ${r.domain}: method ${r.method} (${r.methodReason})`);
  if (r.method === 'snapshot') {
    lines.push(r.quiesced ? `  quiesced snapshot: the snapshot call took ${r.snapshot?.snapshotMs ?? 0} ms, the guest was frozen within it` : '  not quiesced (crash-consistent snapshot)');
    for (const d of r.disks) if ('overlayMs' in d) lines.push(`  ${d.disk}: on its overlay for ${(d.overlayMs / 1000).toFixed(1)} s`);
  } else {
    lines.push(r.quiesced && r.frozenMs !== undefined ? `  guest frozen for ${r.frozenMs} ms around backup-begin (${r.backupJob?.beginMs ?? 0} ms)` : '  not quiesced (crash-consistent backup job)');
    for (const d of r.disks) lines.push(`  ${d.disk}: ${d.scan === 'bitmap' ? 'changed blocks from the checkpoint' : `read in full (${d.scanReason ?? 'full'})`}`);
    if (r.checkpoints?.created !== undefined) lines.push(`  checkpoint ${r.checkpoints.created}${r.checkpoints.deleted.length > 0 ? `; deleted ${r.checkpoints.deleted.join(', ')}` : ''}`);
  }
  return lines.join('\n');
}

function liveBackupText(r: VmBackupReport): string {
  const lines = [backupText(r.disks, r.failures, r.durationMs)];
  lines.push(
    r.frozenMs !== undefined && r.quiesced
      ? `VM ${r.vm}: guest frozen for ${r.frozenMs} ms (${r.snapshot.frozenFilesystems ?? 0} filesystem(s))`
      : `VM ${r.vm}: not quiesced (crash-consistent snapshot)${r.freezeFailure ? `: ${r.freezeFailure.code}` : ''}`,
  );
  for (const d of r.disks) lines.push(`  ${d.disk}: on its overlay for ${(d.overlayMs / 1000).toFixed(1)} s`);
  return lines.join('\n');
}

/** Storage that bills per request (S3): what this run cost, by kind. */
function requestsText(requests: Record<string, number> | undefined): string {
  if (!requests) return '';
  const total = Object.values(requests).reduce((a, b) => a + b, 0);
  return `\nrequests: ${total} (${Object.entries(requests).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`).join(', ')})`;
}

/**
 * BLOCKREP_TEST_HOLD: the fault tests stop a backup at one phase (and kill it there). Waits
 * until the run is interrupted; a timer keeps Node alive while nothing else is open.
 */
function holdAt<P extends string>(hold: P, signal: AbortSignal): (phase: P, disk?: string) => Promise<void> {
  return async (phase, disk) => {
    if (phase !== hold) return;
    process.stderr.write(`blockrep: test hold at ${phase}${disk ? ` (${disk})` : ''}\n`);
    if (signal.aborted) return;
    const alive = setInterval(() => undefined, 60_000);
    await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
    clearInterval(alive);
  };
}
