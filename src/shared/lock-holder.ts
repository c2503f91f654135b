import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { z } from 'zod';

/**
 * Who holds a lock (a disk's in the repository, a VM's next to its QMP socket), and whether
 * that holder is gone: a process on this host that no longer exists, or whose pid now belongs
 * to another process (told apart by its start time). Holders on other hosts are never judged
 * here; a disk lock's lease (disk-lock.ts) covers them.
 */
export const lockHolderSchema = z.object({
  pid: z.number().int(),
  host: z.string(),
  startTime: z.string().optional(),
  createdAt: z.string(),
  purpose: z.string(),
  /** Disk locks: a random id of this acquisition, so a holder knows its own lock from a successor's. */
  lockId: z.string().optional(),
  /** Disk locks: the holder renews within this many ms, or the lock may be taken over. */
  leaseMs: z.number().int().optional(),
  /** Disk locks: the holder's clock at its last renewal (for messages; expiry goes by the storage's clock). */
  renewedAt: z.string().optional(),
});
export type LockHolder = z.infer<typeof lockHolderSchema>;

export function currentHolder(purpose: string): LockHolder {
  const startTime = processStartTime(process.pid);
  return { pid: process.pid, host: hostname(), ...(startTime !== undefined ? { startTime } : {}), createdAt: new Date().toISOString(), purpose };
}

export function holderIsGone(holder: LockHolder): boolean {
  if (holder.host !== hostname()) return false;
  if (holder.pid === process.pid) return false;
  try {
    process.kill(holder.pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
  const now = processStartTime(holder.pid);
  return holder.startTime !== undefined && now !== undefined && now !== holder.startTime;
}

/** A process's start time in clock ticks since boot (field 22 of /proc/PID/stat), if known. */
function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count from the last ")".
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}
