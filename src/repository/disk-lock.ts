import type { Backend } from '../backend/backend.js';
import { BlockrepError, isBlockrepError } from '../shared/blockrep-error.js';
import { diskIdToPathComponent } from '../shared/disk-id.js';
import { currentHolder, holderIsGone, lockHolderSchema, type LockHolder } from '../shared/lock-holder.js';

const lockSchema = lockHolderSchema;
type LockInfo = LockHolder;

/**
 * One writer per disk: an object created exclusively under `locks/`. A lock whose holder was a
 * process on this host that no longer exists is stale and is taken over.
 */
export class DiskLock {
  private constructor(
    private readonly backend: Backend,
    private readonly key: string,
  ) {}

  static async acquire(backend: Backend, diskId: string, purpose: string): Promise<DiskLock> {
    const key = `locks/${diskIdToPathComponent(diskId)}.lock`;
    const info: LockInfo = currentHolder(purpose);
    const body = Buffer.from(JSON.stringify(info));
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await backend.write(key, body, { exclusive: true });
        return new DiskLock(backend, key);
      } catch (err) {
        if (!isBlockrepError(err) || err.code !== 'EXISTS') throw err;
      }
      const holder = await readHolder(backend, key);
      if (holder && holderIsGone(holder)) {
        await backend.remove(key);
        continue;
      }
      const who = holder ? `${holder.purpose} by process ${holder.pid} on ${holder.host} since ${holder.createdAt}` : 'an unknown holder';
      throw new BlockrepError('REPO_LOCKED', `disk ${diskId} is locked: ${who}. Wait for it to finish; if that process is gone, remove ${key} in ${backend.location}`, {
        details: holder ? { holder } : {},
      });
    }
    throw new BlockrepError('REPO_LOCKED', `disk ${diskId} is locked and the lock could not be taken over`);
  }

  async release(): Promise<void> {
    await this.backend.remove(this.key);
  }
}

async function readHolder(backend: Backend, key: string): Promise<LockInfo | undefined> {
  try {
    return lockSchema.parse(JSON.parse((await backend.read(key)).toString('utf8')));
  } catch {
    return undefined;
  }
}

