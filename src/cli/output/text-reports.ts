import type { DiskBackupReport, DiskSummary, RestoreReport, VerifyReport } from '../../app/index.js';
import { formatBytes } from '../../shared/index.js';

/** Human-readable renderings of use-case results; the JSON output prints the objects as they are. */

export function backupText(disks: DiskBackupReport[], failures: Array<{ disk: string; message: string }>, durationMs: number): string {
  const lines: string[] = [];
  for (const d of disks) {
    const pct = d.blocks === 0 ? 0 : (100 * d.changedBlocks) / d.blocks;
    lines.push(`disk ${d.disk}: version ${d.version}${d.parentVersion ? ` (after ${d.parentVersion})` : ' (first version)'}`);
    lines.push(
      `  ${formatBytes(d.imageBytes)} in ${d.blocks} blocks of ${formatBytes(d.blockSize)}: ${d.changedBlocks} changed (${pct.toFixed(1)}%), ${d.zeroBlocks} zero`,
    );
    const how = d.scan === 'bitmap' ? ` (changed-block tracking: the dirty blocks and ${d.sampledBlocks ?? 0} sampled clean ones)` : d.scanReason !== undefined ? ` (a full read: ${d.scanReason})` : '';
    lines.push(
      `  read ${formatBytes(d.bytesRead)}${how}, stored ${formatBytes(d.bytesSent)} (${d.newChunks} new chunks, ${d.reusedChunks} already in the repository) in ${(d.durationMs / 1000).toFixed(1)} s`,
    );
  }
  for (const f of failures) lines.push(`disk ${f.disk}: FAILED: ${f.message}`);
  lines.push(`${disks.length} disk(s) backed up${failures.length ? `, ${failures.length} failed` : ''} in ${(durationMs / 1000).toFixed(1)} s`);
  return lines.join('\n');
}

export function restoreText(r: RestoreReport): string {
  return [
    `restored disk ${r.disk} version ${r.version} to ${r.to} (${r.format})`,
    `  ${formatBytes(r.imageBytes)}: ${r.blocks - r.zeroBlocks} data blocks, ${r.zeroBlocks} zero blocks; fetched ${formatBytes(r.bytesFetched)} in ${(r.durationMs / 1000).toFixed(1)} s`,
  ].join('\n');
}

export function verifyText(r: VerifyReport): string {
  const lines: string[] = [];
  for (const d of r.damage) {
    lines.push(d.block === undefined ? `DAMAGED disk ${d.disk} version ${d.version}: ${d.problem}` : `DAMAGED disk ${d.disk} version ${d.version} block ${d.block}: ${d.problem}`);
  }
  if (r.damageNotListed > 0) lines.push(`... and ${r.damageNotListed} more damaged blocks`);
  lines.push(
    `${r.ok ? 'OK' : 'DAMAGE FOUND'}: ${r.disks} disk(s), ${r.versions} version(s), ${r.chunksChecked} chunks (${formatBytes(r.bytesChecked)}) checked` +
      (r.sample ? ` (a ${r.sample.percent}% sample, seed ${r.sample.seed})` : '') +
      ` in ${(r.durationMs / 1000).toFixed(1)} s` +
      (r.ok ? '' : `; ${r.damage.length + r.damageNotListed} damaged block(s) or manifest(s)`),
  );
  if (r.scope === 'envelopes') {
    lines.push('checked without the key: only the form and size of each sealed manifest and chunk; not their content, nor that each version has the chunks it needs (verify with the passphrase for that)');
  }
  return lines.join('\n');
}

export function listText(disks: DiskSummary[]): string {
  if (disks.length === 0) return 'no disks in this repository yet';
  const lines: string[] = [];
  for (const d of disks) {
    lines.push(`disk ${d.disk} (${d.versions.length} version${d.versions.length === 1 ? '' : 's'})`);
    for (const v of d.versions) {
      if (v.problem) {
        lines.push(`  ${v.version}  UNREADABLE: ${v.problem}`);
        continue;
      }
      lines.push(
        `  ${v.version}  ${formatBytes(v.imageBytes).padStart(10)}  ${String(v.changedBlocks).padStart(8)} changed  ${formatBytes(v.storedBytes).padStart(10)} stored  ${v.source.path ?? v.source.vm ?? ''}`,
      );
    }
  }
  return lines.join('\n');
}
