import type { GcReport } from '../../app/index.js';
import { formatDuration, formatBytes } from '../../shared/index.js';

/** `blockrep gc` for people: what is used, what was freed, what was kept for being recent. */
export function gcText(r: GcReport): string {
  const lines = [
    `${r.versions} version(s) of ${r.disks} disk(s) use ${r.chunksReferenced} chunks (${formatBytes(r.bytesReferenced)})`,
    `${r.dryRun ? 'would remove' : 'removed'} ${r.chunksRemoved} unused chunks (${formatBytes(r.bytesRemoved)})` +
      (r.dryRun ? '' : ` and ${r.tempFilesRemoved} stale temporary files (${formatBytes(r.tempBytesRemoved)})`),
    `kept ${r.chunksKeptYoung} unused chunks (${formatBytes(r.bytesKeptYoung)}) written or touched after ${r.cutoff} (grace ${formatDuration(r.graceMs)})`,
  ];
  if (r.cutoffHeldBy) lines.push(`  the cutoff was moved back to ${r.cutoffHeldBy.since} by ${r.cutoffHeldBy.lock}${r.cutoffHeldBy.purpose ? ` (${r.cutoffHeldBy.purpose})` : ''}`);
  lines.push(`${r.dryRun ? 'DRY RUN ' : ''}done in ${(r.durationMs / 1000).toFixed(1)} s`);
  return lines.join('\n');
}
