import type { RunReport, VmRunReport } from '../../jobs/index.js';
import { formatBytes } from '../../shared/index.js';
import { pruneSummary } from './run-report-prune.js';

/** The summary `blockrep run` prints on stdout: one line for the run, a few per VM. */

const seconds = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;

export function runReportText(r: RunReport): string {
  const s = r.summary;
  const lines: string[] = [];
  const head = r.dryRun
    ? `blockrep run --dry-run: ${s.ok} of ${s.vms} VM(s) ready, ${s.failed} with problems`
    : `blockrep run: ${s.ok} of ${s.vms} VM(s) backed up, ${s.failed} failed`;
  lines.push(
    `${head}${s.notStarted > 0 ? `, ${s.notStarted} not started` : ''}${r.interrupted ? ' (interrupted)' : ''} — ` +
      `${r.dryRun ? '' : `${s.disks} disk(s), ${s.changedBlocks} blocks changed, ${formatBytes(s.bytesSent)} sent, `}${seconds(r.durationMs)}`,
  );
  lines.push(`  config ${r.config}; repository ${r.repository.location}${r.repository.note ? ` (${r.repository.note})` : ''}`);
  if (r.repository.status === 'failed') lines.push(`  REPOSITORY FAILED [${r.repository.code}]: ${r.repository.message}`);
  for (const vm of r.vms) lines.push(...vmLines(vm));
  if (r.requests) lines.push(`  requests: ${Object.entries(r.requests).map(([k, n]) => `${k} ${n}`).join(', ')}`);
  return lines.join('\n');
}

function vmLines(vm: VmRunReport): string[] {
  const status = vm.status === 'ok' ? 'ok' : vm.status === 'failed' ? 'FAILED' : 'NOT STARTED';
  const lines: string[] = [];
  if (vm.checks) {
    lines.push(`  ${status.padEnd(7)} ${vm.vm} (${vm.kind})`);
    for (const c of vm.checks) lines.push(`      ${c.status === 'ok' ? 'ok     ' : c.status === 'warning' ? 'warning' : 'FAILED '} ${c.check}: ${c.message}`);
    return lines;
  }
  const ok = vm.disks.filter((d) => d.status === 'ok');
  const facts = [
    `${ok.length} disk(s)`,
    `${ok.reduce((n, d) => n + d.changedBlocks, 0)} blocks changed`,
    `${formatBytes(ok.reduce((n, d) => n + d.bytesSent, 0))} sent`,
    ...(vm.frozenMs !== undefined && vm.quiesced
      ? [`frozen ${vm.frozenMs} ms${vm.snapshot && 'frozenFilesystems' in vm.snapshot ? ` (${vm.snapshot.frozenFilesystems ?? 0} filesystem(s))` : ''}`]
      : vm.kind !== 'image' && vm.quiesced === false
        ? [vm.freezeFailure ? 'not quiesced: the guest refused the freeze' : 'not quiesced']
        : []),
    seconds(vm.durationMs),
  ];
  const what = vm.status === 'not-started' ? vm.message : vm.status === 'failed' && ok.length === 0 ? seconds(vm.durationMs) : facts.join(', ');
  lines.push(`  ${status.padEnd(7)} ${vm.vm} (${vm.kind}): ${what}`);
  if (vm.status === 'failed' && vm.code !== undefined) lines.push(`      error [${vm.code}]: ${(vm.message ?? '').replace(/\n/g, '\n        ')}`);
  for (const h of vm.hooks ?? []) lines.push(`      host hook ${h.phase}: ${h.status === 'ok' ? 'ok' : `${h.status.toUpperCase()}: ${h.message ?? ''}`}, ${seconds(h.durationMs)} (${h.command})`);
  for (const d of vm.disks) {
    if (d.status === 'ok') {
      lines.push(
        `      ${d.disk}: version ${d.version}, ${d.changedBlocks} of ${d.blocks} blocks changed, ${formatBytes(d.bytesSent)} sent, ${seconds(d.durationMs)}` +
          (d.overlayMs !== undefined ? `, on its overlay ${seconds(d.overlayMs)}` : ''),
      );
    } else {
      lines.push(`      ${d.disk}: FAILED [${d.code}]`);
    }
  }
  if (vm.retention) {
    lines.push(
      vm.retention.status === 'ok' && vm.retention.report
        ? `      retention: ${pruneSummary(vm.retention.report)}`
        : `      retention FAILED [${vm.retention.code}]: ${vm.retention.message}`,
    );
  }
  for (const w of vm.warnings) lines.push(`      warning: ${w}`);
  return lines;
}
