import { mkdir, readFile, utimes, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { contentTag, type Backend } from '../../src/backend/backend.js';
import { HttpBackend } from '../../src/backend/http/http-backend.js';
import { LocalBackend } from '../../src/backend/local/local-backend.js';
import { backupImage } from '../../src/app/backup-image.js';
import { DiskLock, LEASE_ENV } from '../../src/repository/disk-lock.js';
import { Repository } from '../../src/repository/repository.js';
import { BlockrepError } from '../../src/shared/blockrep-error.js';
import { ManualClock } from '../../src/shared/clock.js';
import { createToken } from '../../src/tokens/tokens-file.js';
import { startServer, type RunningTestServer } from '../support/blockrep-server.js';
import { startFaultProxy, type FaultAction } from '../support/fault-proxy.js';
import { tempDir } from '../support/temp-dir.js';

/**
 * Disk locks as leases, in process, against a local directory and the same directory behind a
 * real `blockrep serve`: a lock its holder stopped renewing expires (by the repository's clock,
 * whatever the holder wrote), a renewing holder keeps it, a holder that was taken over notices
 * and leaves its successor's lock alone, and failed renewals damage nothing. Nothing sleeps: a
 * lock is aged by setting its file's time (what the repository judges), and a holder's renewals
 * are fired by moving its ManualClock. The timing rules themselves, on a manual clock alone:
 * test/repository/disk-lock.test.ts.
 */
let dir: string;
let server: RunningTestServer;
let secret: string;
const fast = { attempts: 3, baseDelayMs: 5, maxDelayMs: 20 };
/** Generous: a loaded machine may not run this process for a while. */
const soon = { timeout: 15_000, interval: 5 };

/** Makes a lock look last written `ms` ago by the repository's clock (its file's time). */
async function backdate(path: string, ms: number): Promise<void> {
  const at = new Date(Date.now() - ms);
  await utimes(path, at, at);
}

/** Fires the holder's next renewal and waits until it has finished and the one after is due. */
async function renewOnce(clock: ManualClock, intervalMs: number, done: () => Promise<void> | void): Promise<void> {
  await clock.advance(intervalMs);
  await vi.waitFor(async () => {
    await done();
    expect(clock.pendingTimers).toBe(1);
  }, soon);
}

beforeAll(async () => {
  dir = await tempDir('blockrep-lease-');
  const tokensFile = join(dir, 'tokens.json');
  ({ secret } = await createToken(tokensFile, { name: 'lease', disks: ['*'], rights: ['read', 'write'] }));
  await mkdir(join(dir, 'repo'));
  server = await startServer({ root: join(dir, 'repo'), tokensFile });
});
afterAll(async () => {
  await server?.stop();
});

const kinds: Array<[string, () => Backend]> = [
  ['local directory', () => new LocalBackend(join(dir, 'repo'))],
  ['blockrep serve', () => new HttpBackend({ url: server.url, token: secret, retry: fast })],
];

/** A lock as a blockrep on another host writes it (its pid cannot be judged from here). */
function remoteHolder(extra: Record<string, unknown> = {}): string {
  const at = new Date().toISOString();
  return JSON.stringify({ pid: 4242, host: 'far-away-host', createdAt: at, renewedAt: at, purpose: 'backup', lockId: 'f'.repeat(24), leaseMs: 800, ...extra });
}

describe.each(kinds)('disk lock lease (%s)', (kind, make) => {
  const disk = (name: string): string => `lease-${kind === 'local directory' ? 'l' : 'h'}/${name}`;
  const lockPath = (name: string): string => join(dir, 'repo', 'locks', `${disk(name).replace('/', '%2F')}.lock`);

  it('refuses a live remote holder, naming it and saying what to do; takes it over once its lease expired', async () => {
    const backend = make();
    await mkdir(join(dir, 'repo', 'locks'), { recursive: true });
    await writeFile(lockPath('a'), remoteHolder());
    const refused = DiskLock.acquire(backend, disk('a'), 'backup');
    await expect(refused).rejects.toMatchObject({ code: 'REPO_LOCKED' });
    const message = ((await refused.catch((e: Error) => e)) as Error).message;
    for (const part of ['backup by process 4242 on far-away-host since ', 'last renewed', 'lease 0.8 s', 'Wait for it to finish', 'expires 0.8 s after its last renewal', 'remove locks/']) {
      expect(message).toContain(part);
    }
    expect(message).not.toContain('f'.repeat(24)); // the lock id would let others renew it
    // Its holder has not renewed for 0.9 s, by the repository's clock: past its 0.8 s lease.
    await backdate(lockPath('a'), 900);
    const lock = await DiskLock.acquire(backend, disk('a'), 'backup');
    const now = JSON.parse(await readFile(lockPath('a'), 'utf8'));
    expect(now).toMatchObject({ pid: process.pid, host: hostname(), leaseMs: 300_000 });
    await lock.release();
    await backend.close();
  });

  it('judges expiry by the lock file\'s age on the repository side, not by the holder\'s timestamps', async () => {
    const backend = make();
    // A holder whose clock runs a century ahead, whose lock was last written 10 s ago: expired.
    await writeFile(lockPath('b'), remoteHolder({ createdAt: '2126-01-01T00:00:00.000Z', renewedAt: '2126-01-01T00:00:00.000Z', leaseMs: 5000 }));
    const tenSecondsAgo = new Date(Date.now() - 10_000);
    await utimes(lockPath('b'), tenSecondsAgo, tenSecondsAgo);
    await (await DiskLock.acquire(backend, disk('b'), 'backup')).release();
    // A holder whose clock is a day behind, whose lock was written just now: alive.
    const dayAgo = new Date(Date.now() - 86_400_000).toISOString();
    await writeFile(lockPath('b'), remoteHolder({ createdAt: dayAgo, renewedAt: dayAgo, leaseMs: 5000 }));
    await expect(DiskLock.acquire(backend, disk('b'), 'backup')).rejects.toMatchObject({ code: 'REPO_LOCKED' });
    // A lock from before leases (no leaseMs): the default lease, 5 minutes, applies.
    await writeFile(lockPath('b'), JSON.stringify({ pid: 4242, host: 'far-away-host', createdAt: dayAgo, purpose: 'backup' }));
    await expect(DiskLock.acquire(backend, disk('b'), 'backup')).rejects.toMatchObject({ code: 'REPO_LOCKED', message: expect.stringContaining('lease 300 s') });
    const sixMinutesAgo = new Date(Date.now() - 360_000);
    await utimes(lockPath('b'), sixMinutesAgo, sixMinutesAgo);
    await (await DiskLock.acquire(backend, disk('b'), 'backup')).release();
    await backend.close();
  });

  it('keeps a renewing holder\'s lock past its lease, twice over, and removes it on release', async () => {
    const backend = make();
    const contender = make();
    const clock = new ManualClock(Date.now());
    const lock = await DiskLock.acquire(backend, disk('c'), 'backup', { leaseMs: 800, clock });
    for (let i = 0; i < 3; i++) {
      // Its last renewal 10 s ago by the repository's clock: only the renewal made now keeps it.
      await backdate(lockPath('c'), 10_000);
      const before = await readFile(lockPath('c'), 'utf8');
      await renewOnce(clock, 80, async () => expect(await readFile(lockPath('c'), 'utf8')).not.toBe(before));
      await expect(DiskLock.acquire(contender, disk('c'), 'backup')).rejects.toMatchObject({ code: 'REPO_LOCKED' });
    }
    await lock.assertHeld();
    await lock.release();
    await expect(readFile(lockPath('c'))).rejects.toMatchObject({ code: 'ENOENT' });
    await (await DiskLock.acquire(contender, disk('c'), 'backup')).release();
    await backend.close();
    await contender.close();
  });

  it('replaces a lock only while it is unchanged, one contender at a time', async () => {
    const backend = make();
    const key = `locks/${disk('f').replace('/', '%2F')}.lock`;
    await writeFile(lockPath('f'), remoteHolder());
    const tag = contentTag(await readFile(lockPath('f')));
    const results = await Promise.all(Array.from({ length: 8 }, (_, i) => backend.replaceIfMatch!(key, tag, Buffer.from(remoteHolder({ lockId: String(i).repeat(24) })))));
    expect(results.filter(Boolean)).toHaveLength(1);
    expect(await backend.replaceIfMatch!(key, tag, null)).toBe(false);
    const winner = await readFile(lockPath('f'));
    expect(JSON.parse(winner.toString()).lockId).toBe(String(results.indexOf(true)).repeat(24));
    expect(await backend.replaceIfMatch!(key, contentTag(winner), null)).toBe(true);
    await expect(readFile(lockPath('f'))).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await backend.replaceIfMatch!(key, contentTag(winner), null)).toBe(false);
    await backend.close();
  });

  it('a holder that was taken over fails with LOCK_LOST before publishing and leaves its successor\'s lock', async () => {
    const backend = make();
    const lock = await DiskLock.acquire(backend, disk('d'), 'backup', { leaseMs: 60_000 });
    // What a successor leaves after taking over (as if this holder had stopped renewing).
    const successor = remoteHolder({ leaseMs: 60_000, lockId: 'e'.repeat(24) });
    await writeFile(lockPath('d'), successor);
    const lost = lock.assertHeld();
    await expect(lost).rejects.toMatchObject({ code: 'LOCK_LOST', message: expect.stringContaining('backup by process 4242 on far-away-host') });
    await expect(lock.assertHeld()).rejects.toMatchObject({ code: 'LOCK_LOST' });
    await lock.release();
    expect(await readFile(lockPath('d'), 'utf8')).toBe(successor);
    await backend.close();
  });
});

describe('release', () => {
  it('a lock that cannot be removed (the server went away after the publish) does not fail a published backup', async () => {
    const inner = new LocalBackend(join(dir, 'release-repo'));
    // Removing the lock fails; everything else works.
    const backend = new Proxy(inner, {
      get(target, prop) {
        if (prop === 'replaceIfMatch') {
          return async (key: string, tag: string, data: Uint8Array | null) => {
            if (data === null) throw new BlockrepError('UNAVAILABLE', 'the server went away');
            return target.replaceIfMatch(key, tag, data);
          };
        }
        const value = Reflect.get(target, prop) as unknown;
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const repo = await Repository.open(backend, { create: true });
    const image = join(dir, 'release.raw');
    await writeFile(image, Buffer.alloc(256 * 1024, 7));
    const report = await backupImage(repo, { path: image, diskId: 'rel/a', blockSize: 65536 });
    expect(await repo.listVersions('rel/a')).toEqual([report.version]);
    // Left behind: it expires with its lease (at once for the next run, once this process is gone).
    expect(JSON.parse(await readFile(join(dir, 'release-repo', 'locks', 'rel%2Fa.lock'), 'utf8'))).toMatchObject({ pid: process.pid });
  });
});

describe('lease setting', () => {
  it('takes BLOCKREP_LOCK_LEASE_MS, and refuses a bad one with a usage error', async () => {
    const backend = new LocalBackend(join(dir, 'repo'));
    const saved = process.env[LEASE_ENV];
    try {
      process.env[LEASE_ENV] = '5';
      await expect(DiskLock.acquire(backend, 'lease-env/a', 'backup')).rejects.toMatchObject({ code: 'USAGE', message: expect.stringContaining(LEASE_ENV) });
      process.env[LEASE_ENV] = '1234';
      const lock = await DiskLock.acquire(backend, 'lease-env/a', 'backup');
      expect(lock.leaseMs).toBe(1234);
      await lock.release();
    } finally {
      if (saved === undefined) delete process.env[LEASE_ENV];
      else process.env[LEASE_ENV] = saved;
    }
  });
});

describe('disk lock renewals through a failing network', () => {
  it('renewals that fail (503s, dropped connections) damage nothing; the lease survives them and the holder keeps its lock', async () => {
    let failing = false;
    let failures = 0;
    const proxy = await startFaultProxy(server.url, (req): FaultAction => {
      if (!failing || req.method !== 'PUT') return 'pass';
      failures++;
      return failures % 2 === 0 ? 'reset' : { status: 503 };
    });
    const backend = new HttpBackend({ url: proxy.url, token: secret, retry: { attempts: 1, baseDelayMs: 5, maxDelayMs: 5 } });
    const clock = new ManualClock(Date.now());
    const lock = await DiskLock.acquire(backend, 'lease-net/e', 'backup', { leaseMs: 2000, clock });
    const path = join(dir, 'repo', 'locks', 'lease-net%2Fe.lock');
    failing = true;
    // Three renewals (every 0.2 s of a 2 s lease), each failing on the way.
    for (let n = 1; n <= 3; n++) await renewOnce(clock, 200, () => expect(failures).toBeGreaterThanOrEqual(n));
    expect(failures).toBeGreaterThanOrEqual(3);
    // Still the holder's lock, whole.
    expect(JSON.parse(await readFile(path, 'utf8'))).toMatchObject({ pid: process.pid, leaseMs: 2000 });
    failing = false;
    await lock.assertHeld();
    await lock.release();
    await expect(readFile(path)).rejects.toMatchObject({ code: 'ENOENT' });
    await backend.close();
    await proxy.close();
  });
});
