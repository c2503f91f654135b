import type { Command } from 'commander';
import { recoverDomain, type RecoverDomainReport, recoverVm, type RecoverVmReport } from '../../app/index.js';
import { BlockrepError } from '../../shared/index.js';
import { runCommand } from '../command-context.js';
import { EXIT_OK } from '../exit-codes.js';

interface RecoverOptions {
  qmp?: string;
  domain?: string;
  connect?: string;
  qga?: string;
  json?: boolean;
}

export function registerRecover(program: Command): void {
  program
    .command('recover')
    .description(
      'put a running VM right after a blockrep run was interrupted or killed: thaw a guest left frozen, ' +
        'end a leftover blockrep block job or backup job, commit any blockrep overlay back into its base, delete leftover overlay files and work folders (does nothing when all is well; never deletes a checkpoint)',
    )
    .option('--domain <name>', 'a libvirt domain')
    .option('--connect <uri>', 'libvirt URI for --domain (default: libvirt\'s default)')
    .option('--qmp <socket>', "the unix socket of the VM's QEMU monitor (QMP), for a VM libvirt does not manage")
    .option('--qga <socket>', 'the unix socket of its guest agent (default: found through QMP)')
    .option('--json', 'print one JSON object as the report')
    .action(async (opts: RecoverOptions) => {
      await runCommand(Boolean(opts.json), async () => {
        if ((opts.domain === undefined) === (opts.qmp === undefined)) throw new BlockrepError('USAGE', 'give --domain NAME (a libvirt domain) or --qmp SOCKET (a QEMU VM), one of them');
        if (opts.domain !== undefined) {
          if (opts.qga !== undefined) throw new BlockrepError('USAGE', '--qga is for --qmp; libvirt reaches the guest agent itself');
          const r = await recoverDomain(
            { domain: opts.domain, ...(opts.connect !== undefined ? { connect: opts.connect } : {}) },
            {
              onWarning: (m) => {
                process.stderr.write(`blockrep: warning: ${m}\n`);
              },
            },
          );
          return { exitCode: EXIT_OK, json: { ok: true, ...r }, text: recoverDomainText(r) };
        }
        if (opts.connect !== undefined) throw new BlockrepError('USAGE', '--connect needs --domain');
        const report = await recoverVm(
          { qmpSocket: opts.qmp!, ...(opts.qga !== undefined ? { qgaSocket: opts.qga } : {}) },
          {
            onWarning: (m) => {
              process.stderr.write(`blockrep: warning: ${m}\n`);
            },
          },
        );
        return { exitCode: EXIT_OK, json: { ok: true, ...report }, text: recoverText(report) };
      });
    });
}

function recoverText(r: RecoverVmReport): string {
  const lines: string[] = [];
  if (r.agent === 'unavailable') lines.push('guest agent: not reachable; the freeze state was not checked');
  else lines.push(r.thawed ? 'guest: was frozen, now thawed' : 'guest: not frozen');
  for (const j of r.jobs) lines.push(`commit job ${j.job}: finished (${j.status}${j.error ? `, error: ${j.error}` : ''})`);
  for (const c of r.committed) lines.push(`disk ${c.disk}: overlay ${c.overlay} committed back; the disk runs on its own image again`);
  for (const e of r.removedExports) lines.push(`removed leftover NBD export ${e}`);
  if (r.stoppedNbdServer) lines.push(`stopped QEMU's NBD server (blockrep had started it)`);
  for (const b of r.removedBitmaps) lines.push(`removed leftover tracking read copy ${b.name} on node ${b.node}`);
  for (const f of r.removedFiles) lines.push(`removed leftover overlay file ${f}`);
  const nothing =
    !r.thawed && r.jobs.length === 0 && r.committed.length === 0 && r.removedFiles.length === 0 && r.removedExports.length === 0 && !r.stoppedNbdServer && r.removedBitmaps.length === 0;
  if (r.warnings.length > 0) lines.push(`recovered what could be recovered; ${r.warnings.length} warning(s) above say what was left alone`);
  else lines.push(nothing ? 'nothing to recover: the VM runs on its own images' : 'recovered: the VM runs on its own images');
  return lines.join('\n');
}

function recoverDomainText(r: RecoverDomainReport): string {
  const lines: string[] = [];
  if (r.agent === 'unavailable') lines.push('guest agent: not reachable; the freeze state was not checked');
  else lines.push((r.thawedFilesystems ?? 0) > 0 ? `guest: was frozen, ${r.thawedFilesystems} filesystem(s) thawed` : 'guest: not frozen');
  for (const j of r.jobs) lines.push(j.type === 'Backup' ? `disk ${j.disk}: blockrep's backup job ended (domjobabort)` : `disk ${j.disk}: block job (${j.type}) on a blockrep overlay aborted`);
  for (const c of r.committed) lines.push(`disk ${c.disk}: overlay ${c.overlay} committed back into ${c.base}; the disk runs on its own image again`);
  for (const f of r.removedFiles) lines.push(`removed ${f}, left by an earlier run (an overlay, or the work folder of a backup job)`);
  const nothing = (r.thawedFilesystems ?? 0) === 0 && r.jobs.length === 0 && r.committed.length === 0 && r.removedFiles.length === 0;
  if (r.warnings.length > 0) lines.push(`recovered what could be recovered; ${r.warnings.length} warning(s) above say what was left alone`);
  else lines.push(nothing ? `nothing to recover: domain ${r.domain} runs on its own images` : `recovered: domain ${r.domain} runs on its own images`);
  return lines.join('\n');
}
