import { readFileSync } from 'node:fs';
import { open, readFile, unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import { z } from 'zod';
import { BlockrepError, wrapSystemError } from '../shared/blockrep-error.js';

/**
 * One blockrep run per VM at a time: a lock file next to the VM's QMP socket
 * (`<socket>.blockrep.lock`), created exclusively, holding the holder's pid, host and process
 * start time. A lock whose holder was a process on this host that no longer exists (or whose
 * pid now belongs to another process) is stale and is taken over, so that a run killed with
 * kill -9 never blocks the next one.
 */

const lockSchema = z.object({ pid: z.number().int(), host: z.string(), startTime: z.string().optional(), createdAt: z.string(), purpose: z.string() });
type LockInfo = z.infer<typeof lockSchema>;

export function vmLockPathFor(qmpSocket: string): string {
  return `${qmpSocket}.blockrep.lock`;
}

/** A process's start time in clock ticks since boot (field 22 of /proc/PID/stat), if known. */
function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count from the last ")".
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19];
  } catch {
    return undefined;
  }
}

function isStale(holder: LockInfo): boolean {
  if (holder.host !== hostname()) return false;
  if (holder.pid === process.pid) return false;
  try {
    process.kill(holder.pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
  // The pid exists: stale only if it is another process than the one that took the lock.
  const now = processStartTime(holder.pid);
  return holder.startTime !== undefined && now !== undefined && now !== holder.startTime;
}

export class VmLock {
  private constructor(readonly path: string) {}

  static async acquire(qmpSocket: string, purpose: string): Promise<VmLock> {
    const path = vmLockPathFor(qmpSocket);
    const info: LockInfo = { pid: process.pid, host: hostname(), startTime: processStartTime(process.pid), createdAt: new Date().toISOString(), purpose };
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const fh = await open(path, 'wx', 0o644);
        try {
          await fh.writeFile(`${JSON.stringify(info)}\n`);
          await fh.sync();
        } finally {
          await fh.close();
        }
        return new VmLock(path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw wrapSystemError(err, `cannot create the VM lock ${path}`);
      }
      const holder = await readHolder(path);
      if (holder === 'unreadable') {
        // A lock being written this instant, or one cut short by a crash: look again shortly.
        await new Promise((r) => setTimeout(r, 200));
        if ((await readHolder(path)) !== 'unreadable') continue;
        await removeIfSame(path, undefined);
        continue;
      }
      if (holder === undefined) continue; // gone meanwhile
      if (isStale(holder)) {
        await removeIfSame(path, holder);
        continue;
      }
      throw new BlockrepError(
        'VM_LOCKED',
        `another blockrep process is working on this VM: ${holder.purpose} by process ${holder.pid} on ${holder.host} since ${holder.createdAt}. ` +
          `Wait for it to finish; if that process is gone, remove ${path}`,
        { details: { lock: path, holder } },
      );
    }
    throw new BlockrepError('VM_LOCKED', `the VM lock ${path} could not be taken`, { details: { lock: path } });
  }

  async release(): Promise<void> {
    try {
      await unlink(this.path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}

async function readHolder(path: string): Promise<LockInfo | 'unreadable' | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    return 'unreadable';
  }
  try {
    return lockSchema.parse(JSON.parse(text));
  } catch {
    return 'unreadable';
  }
}

/** Removes a stale lock unless another process replaced it meanwhile. */
async function removeIfSame(path: string, holder: LockInfo | undefined): Promise<void> {
  const now = await readHolder(path);
  if (holder !== undefined && (now === undefined || now === 'unreadable' || now.pid !== holder.pid || now.createdAt !== holder.createdAt)) return;
  try {
    await unlink(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
