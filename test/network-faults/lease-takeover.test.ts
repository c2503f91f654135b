import { readFile, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/run-cli.js';
import { DISK, FaultRig, sleep } from './network-fault-kit.js';

/**
 * Disk locks as leases, end to end: real CLI processes against a real `blockrep serve`. A lock
 * left by a holder on another host that died is refused with a message naming it, then taken
 * over once its lease expired; a live holder renews past several leases; a holder that stopped
 * renewing (SIGSTOP) and was taken over fails with LOCK_LOST and publishes nothing.
 */
let rig: FaultRig;
const lockFile = (): string => join(rig.root, 'locks', `${DISK}.lock`);
const readLock = async (): Promise<{ pid: number } | undefined> => {
  try {
    return JSON.parse(await readFile(lockFile(), 'utf8'));
  } catch {
    return undefined;
  }
};

beforeAll(async () => {
  rig = await FaultRig.create('blockrep-net-lease-');
  rig.expectPublished(await rig.backup());
});
afterAll(async () => {
  await rig?.stop();
});

describe('disk lock leases over HTTP', () => {
  it('a lock left by a dead holder on another host is refused with its holder named, then taken over after its lease', async () => {
    await mkdir(join(rig.root, 'locks'), { recursive: true });
    const at = new Date().toISOString();
    await writeFile(lockFile(), JSON.stringify({ pid: 777, host: 'backup-client-2', createdAt: at, renewedAt: at, purpose: 'backup', lockId: 'a'.repeat(24), leaseMs: 1500 }));
    await rig.rewriteBlocks(4);
    const refused = await rig.backup();
    expect(refused.code).toBe(5);
    expect(refused.json).toMatchObject({ ok: false, code: 'REPO_LOCKED' });
    for (const part of [`disk ${DISK} is locked: backup by process 777 on backup-client-2 since ${at}`, 'last renewed', 'lease 1.5 s', 'next run takes it over', `remove locks/${DISK}.lock in ${rig.url}`]) {
      expect(refused.json.message).toContain(part);
    }
    await rig.expectWhole();
    await sleep(1600);
    rig.expectPublished(await rig.backup());
    expect(await readLock()).toBeUndefined();
    await rig.expectWhole();
  });

  it('a live holder renews past several leases; once it stops renewing (SIGSTOP) it is taken over, and fails with LOCK_LOST before publishing', async () => {
    await rig.rewriteBlocks(64);
    const lease = '600';
    // A: a slow upload (4 MiB at 1.5 MB/s, ~2.7 s) with a 0.6 s lease.
    const a = rig.spawnBackup({ extra: ['--bwlimit', '1500K'], env: { BLOCKREP_LOCK_LEASE_MS: lease } });
    for (let i = 0; (await readLock())?.pid !== a.child.pid; i++) {
      if (i > 500) throw new Error(`A never took the lock: ${a.stderr()}`);
      await sleep(10);
    }
    // Three leases later, A still holds it: a contender is refused.
    await sleep(1800);
    const refused = await rig.backup();
    expect(refused.json, refused.stdout).toMatchObject({ ok: false, code: 'REPO_LOCKED' });
    expect(refused.json.message).toContain(`backup by process ${a.child.pid}`);

    // A stops renewing; after its lease, B takes the lock over.
    a.child.kill('SIGSTOP');
    await sleep(900);
    const b = rig.spawnBackup({ extra: ['--bwlimit', '4M'] });
    for (let i = 0; (await readLock())?.pid !== b.child.pid; i++) {
      if (i > 1000) throw new Error(`B never took the lock over: ${b.stderr()}`);
      await sleep(5);
    }
    b.child.kill('SIGSTOP');
    a.child.kill('SIGCONT');
    const lost = await a.exit;
    expect(lost.code, lost.stdout + lost.stderr).toBe(5);
    expect(lost.json).toMatchObject({ ok: false, code: 'LOCK_LOST' });
    expect(lost.json.message).toContain(`it is now held by backup by process ${b.child.pid}`);
    expect(lost.json.message).toContain('Nothing was published');
    // A left B's lock alone.
    expect((await readLock())?.pid).toBe(b.child.pid);
    b.child.kill('SIGCONT');
    rig.expectPublished(await b.exit);
    await rig.expectWhole();
  });

  it('refuses a bad lease setting with a usage error', async () => {
    const bad = await runCli(rig.backupArgs(), { env: rig.env({ BLOCKREP_LOCK_LEASE_MS: '5' }) });
    expect(bad.code).toBe(2);
    expect(bad.json).toMatchObject({ ok: false, code: 'USAGE', message: expect.stringContaining('BLOCKREP_LOCK_LEASE_MS') });
  });
});
