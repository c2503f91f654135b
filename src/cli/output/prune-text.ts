import type { PruneReport } from '../../app/index.js';

/** `blockrep prune` for people: per disk, each version kept (and why) or removed. */
export function pruneText(r: PruneReport): string {
  const lines: string[] = [];
  const removedWord = r.dryRun ? 'would remove' : 'removed';
  for (const d of r.disks) {
    if (d.skipped) {
      lines.push(`disk ${d.disk}: SKIPPED: ${d.skipped.message}`);
      continue;
    }
    lines.push(`disk ${d.disk}: keeping ${d.kept.length}, ${removedWord} ${d.removed.length}`);
    const rows = [
      ...d.kept.map((k) => ({ version: k.version, what: `keep    ${k.reasons.join(', ')}` })),
      ...d.removed.map((x) => ({ version: x.version, what: r.dryRun ? 'remove  (dry run)' : 'removed' })),
    ].sort((a, b) => (a.version < b.version ? -1 : 1));
    for (const row of rows) lines.push(`  ${row.version}  ${row.what}`);
  }
  if (r.disks.length === 0) lines.push('no disks in this repository yet');
  lines.push(
    `${r.dryRun ? 'DRY RUN: ' : ''}${r.versionsKept} version(s) kept, ${r.versionsRemoved} ${removedWord}` +
      (r.disksSkipped > 0 ? `, ${r.disksSkipped} disk(s) skipped (locked)` : '') +
      (r.versionsRemoved > 0 && !r.dryRun ? '; run blockrep gc to free their chunks' : ''),
  );
  return lines.join('\n');
}
