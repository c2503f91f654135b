import type { PruneReport } from '../../app/index.js';

/** One line on what a run's retention did to a VM's disks. */
export function pruneSummary(p: PruneReport): string {
  const skipped = p.disks.filter((d) => d.skipped);
  return (
    `kept ${p.versionsKept} version(s), removed ${p.versionsRemoved} (their chunks go at the next blockrep gc)` +
    (skipped.length > 0 ? `; skipped ${skipped.map((d) => `${d.disk} [${d.skipped?.code}]`).join(', ')}` : '')
  );
}
