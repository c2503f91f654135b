import { open, readFile, unlink } from 'node:fs/promises';
import { BlockrepError, wrapSystemError, currentHolder, holderIsGone, lockHolderSchema, type LockHolder } from '../shared/index.js';

/**
 * One blockrep run per VM at a time: a lock file next to the VM's QMP socket
 * (`<socket>.blockrep.lock`), created exclusively, holding the holder's pid, host and process
 * start time. A lock whose holder was a process on this host that no longer exists (or whose
 * pid now belongs to another process) is stale and is taken over, so that a run killed with
 * kill -9 never blocks the next one.
 */

const lockSchema = lockHolderSchema;
type LockInfo = LockHolder;

export function vmLockPathFor(qmpSocket: string): string {
  return `${qmpSocket}.blockrep.lock`;
}


export class VmLock {
  private constructor(readonly path: string) {}

  static async acquire(qmpSocket: string, purpose: string): Promise<VmLock> {
    return VmLock.acquireAt(vmLockPathFor(qmpSocket), purpose);
  }

  /** The same lock at a path of the caller's choosing (a libvirt domain has no socket of ours). */
  static async acquireAt(path: string, purpose: string): Promise<VmLock> {
    const info: LockInfo = currentHolder(purpose);
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
      if (holderIsGone(holder)) {
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
