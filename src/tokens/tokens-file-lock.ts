import { randomBytes } from 'node:crypto';
import { link, open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { BlockrepError, currentHolder, holderIsGone, lockHolderSchema, systemErrorCode, wrapSystemError, type LockHolder } from '../shared/index.js';

/**
 * One `blockrep token` change of a tokens file at a time: the change reads the file, edits it
 * and writes it back whole, so two at once would lose one (a revoked token coming back). The
 * lock is a file `<tokens file>.lock` created exclusively (O_EXCL) that names its holder.
 * A lock whose process is gone (same host), or older than any change takes, is stale and taken
 * over; a live one is waited for.
 */
const WAIT_MS = 10_000;
/** A change takes milliseconds; a lock this old was left by a process that hung or died elsewhere. */
const STALE_MS = 60_000;

export async function withTokensFileLock<T>(tokensFile: string, change: () => Promise<T>): Promise<T> {
  const lockPath = `${tokensFile}.lock`;
  const started = Date.now();
  let pause = 5;
  for (;;) {
    if (await tryCreate(lockPath)) break;
    const holder = await readHolder(lockPath);
    if (holder === 'missing') continue; // released meanwhile: try again at once
    if (holder.stale) {
      await removeStale(lockPath, holder.text);
      continue;
    }
    if (Date.now() - started > WAIT_MS) {
      const who = holder.holder ? `pid ${holder.holder.pid} on ${holder.holder.host} since ${holder.holder.createdAt}` : 'another process';
      throw new BlockrepError('TOKENS_LOCKED', `the tokens file ${tokensFile} is being changed by ${who}; try again (if no blockrep token command runs, remove ${lockPath})`);
    }
    await sleep(pause + Math.random() * pause);
    pause = Math.min(pause * 2, 100);
  }
  try {
    return await change();
  } finally {
    await unlink(lockPath).catch(() => undefined);
  }
}

async function tryCreate(lockPath: string): Promise<boolean> {
  try {
    const fh = await open(lockPath, 'wx', 0o600);
    try {
      await fh.writeFile(`${JSON.stringify(currentHolder('blockrep token'))}\n`);
    } finally {
      await fh.close();
    }
    return true;
  } catch (err) {
    if (systemErrorCode(err) === 'EEXIST') return false;
    throw wrapSystemError(err, `locking the tokens file (${lockPath})`);
  }
}

async function readHolder(lockPath: string): Promise<'missing' | { text: string; holder: LockHolder | undefined; stale: boolean }> {
  let text: string;
  let ageMs: number;
  try {
    text = await readFile(lockPath, 'utf8');
    ageMs = Date.now() - (await stat(lockPath)).mtimeMs;
  } catch (err) {
    if (systemErrorCode(err) === 'ENOENT') return 'missing';
    throw wrapSystemError(err, `reading ${lockPath}`);
  }
  let holder: LockHolder | undefined;
  try {
    const parsed = lockHolderSchema.safeParse(JSON.parse(text));
    holder = parsed.success ? parsed.data : undefined;
  } catch {
    holder = undefined; // being written this instant, or damaged: judged by its age
  }
  const stale = ageMs > STALE_MS || (holder !== undefined && holderIsGone(holder));
  return { text, holder, stale };
}

/**
 * Removes a stale lock only if it is still the one judged stale: it is renamed aside (atomic)
 * and its content compared; a fresh lock that replaced it meanwhile is put back.
 */
async function removeStale(lockPath: string, staleText: string): Promise<void> {
  const aside = `${lockPath}.stale-${randomBytes(6).toString('hex')}`;
  try {
    await rename(lockPath, aside);
  } catch (err) {
    if (systemErrorCode(err) === 'ENOENT') return;
    throw wrapSystemError(err, `taking over ${lockPath}`);
  }
  const text = await readFile(aside, 'utf8').catch(() => undefined);
  if (text === staleText) {
    await unlink(aside).catch(() => undefined);
    return;
  }
  // Someone else's fresh lock: put it back (link fails if yet another holder took the name).
  await link(aside, lockPath).catch(() => undefined);
  await unlink(aside).catch(() => undefined);
}
