import { mkdir, readdir, readFile, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { openRepository } from '../../src/repository/open-repository.js';
import { startFaultProxy, type FaultAction } from '../support/fault-proxy.js';
import { REMOTE_WRITE_CONCURRENCY } from '../../src/app/backup-image.js';
import { DISK, FaultRig, IMAGE_BLOCKS, NON_CHUNK_MARGIN, newBytes, sleep } from './network-fault-kit.js';

/**
 * A backup over HTTP interrupted at any point — client killed, server killed, connections cut
 * mid-body — leaves only whole versions, `verify` passes, and the run that follows (or the
 * client's own retries) completes without sending again what the repository already holds.
 * Real `blockrep serve` on loopback, real CLI processes, kill -9. Each case rewrites 32 blocks
 * (2 MiB of random data, 32 new chunks) of a 4 MiB raw image; `--bwlimit` stretches the upload
 * so that the kill lands in its middle, found by watching chunk files appear on the server.
 *
 * Then disk locks as leases, end to end: a lock left by a holder on another host that died is
 * refused with a message naming it, then taken over once its lease expired; a live holder
 * renews and keeps it; a holder that stopped renewing (SIGSTOP) and was taken over fails with
 * LOCK_LOST and publishes nothing. (One file: one server and one first backup for all.)
 */
const CHANGED = 32;
let rig: FaultRig;
const lockFile = (): string => join(rig.root, 'locks', `${DISK}.lock`);
const readLock = async (): Promise<{ pid: number; renewedAt?: string } | undefined> => {
  try {
    return JSON.parse(await readFile(lockFile(), 'utf8'));
  } catch {
    return undefined;
  }
};

beforeAll(async () => {
  rig = await FaultRig.create('blockrep-net-faults-');
  rig.expectPublished(await rig.backup());
});
afterAll(async () => {
  await rig?.stop();
});

describe('backup over HTTP, interrupted', () => {
  it('kill -9 of the client mid-upload (3 chunks stored, then 20) and while it sends the manifest: only whole versions, and no chunk the repository held is sent again', async () => {
    await rig.rewriteBlocks(CHANGED);
    const before = await rig.chunkFiles();
    let manifestPuts = 0;
    const proxy = await startFaultProxy(rig.url, (req): FaultAction => {
      if (req.method === 'PUT' && req.url?.startsWith('/v1/objects/disks/')) return manifestPuts++ === 0 ? 'hold-body' : 'pass';
      return 'pass';
    });
    try {
      let held = { count: 0, bytes: 0 };
      for (const stored of [3, 20]) {
        const run = rig.spawnBackup({ url: proxy.url, extra: ['--bwlimit', '2M'] });
        await rig.waitForNewChunks(before, stored);
        run.child.kill('SIGKILL');
        expect((await run.exit).code).toBe(137);
        await sleep(100); // requests the server had whole may still land: they count as held
        held = newBytes(before, await rig.chunkFiles());
        expect(held.count).toBeGreaterThanOrEqual(stored);
        expect(held.count).toBeLessThan(CHANGED); // the kill landed mid-upload
        await rig.expectWhole();
      }

      // The next run takes over the dead client's lock at once (same host, process gone), sends
      // the rest, and is killed while its manifest is on the way.
      const mark = rig.logMark();
      const third = rig.spawnBackup({ url: proxy.url });
      const hold = await proxy.nextHold();
      const all = newBytes(before, await rig.chunkFiles());
      expect(all.count).toBe(CHANGED);
      // What it sent, by the server's log: not one chunk the repository held.
      for (let i = 0; i < 100 && rig.chunkUploadsSince(mark).length < CHANGED - held.count; i++) await sleep(10); // the log comes through a pipe
      const received = rig.chunkUploadsSince(mark);
      expect(received).toHaveLength(CHANGED - held.count);
      expect(received.reduce((a, b) => a + b, 0)).toBe(all.bytes - held.bytes);
      third.child.kill('SIGKILL');
      hold.cut();
      expect((await third.exit).code).toBe(137);
      await rig.expectWhole();

      // The run that completes sends its manifest and no chunk.
      const last = rig.expectPublished(await rig.backup({ url: proxy.url }));
      expect(last).toMatchObject({ newChunks: 0, reusedChunks: CHANGED });
      expect(last.bytesSent).toBeLessThan(NON_CHUNK_MARGIN);
      await rig.expectWhole();
    } finally {
      await proxy.close();
    }
  });

  it('kill -9 of the server during uploads, and again while it receives the manifest; restarted on the same root each time, the run completes', async () => {
    await rig.rewriteBlocks(CHANGED);
    const before = await rig.chunkFiles();
    let manifestPuts = 0;
    const proxy = await startFaultProxy(rig.url, (req): FaultAction => {
      if (req.method === 'PUT' && req.url?.startsWith('/v1/objects/disks/')) return manifestPuts++ === 0 ? 'hold-body' : 'pass';
      return 'pass';
    });
    try {
      const mark = rig.logMark();
      const run = rig.spawnBackup({ url: proxy.url, extra: ['--bwlimit', '2M'] });
      await rig.waitForNewChunks(before, 6);
      await rig.killServer();
      const held = newBytes(before, await rig.chunkFiles());
      expect(held.count).toBeLessThan(CHANGED);
      expect(await rig.manifestFiles()).toEqual(rig.versions); // nothing half published
      await rig.startServer();

      // The client's retries carry on; its manifest upload is held one byte short of its end.
      const hold = await Promise.race([proxy.nextHold(), run.exit.then(() => undefined)]);
      let done;
      if (hold === undefined) {
        // Its retries ran out before the server was back (a slow machine): the next run completes.
        expect((await run.exit).json).toMatchObject({ ok: false, code: 'UNAVAILABLE' });
        await rig.expectWhole();
        done = rig.expectPublished(await rig.backup({ url: proxy.url }));
      } else {
        expect(newBytes(before, await rig.chunkFiles()).count).toBe(CHANGED);
        await rig.killServer();
        hold.cut();
        // A spooled manifest cut short is no version.
        expect(await rig.manifestFiles()).toEqual(rig.versions);
        await rig.startServer();
        const result = await run.exit;
        done = rig.expectPublished(result.code === 12 ? await rig.backup({ url: proxy.url }) : result);
        expect(manifestPuts).toBeGreaterThanOrEqual(2);
      }
      const all = newBytes(before, await rig.chunkFiles());
      expect(all.count).toBe(CHANGED);
      expect(done.bytesSent).toBeLessThanOrEqual(all.bytes + NON_CHUNK_MARGIN);
      // By the servers' logs: no chunk went twice but uploads in flight at the kill.
      expect(rig.chunkUploadsSince(mark).length).toBeLessThanOrEqual(CHANGED + REMOTE_WRITE_CONCURRENCY);
      await rig.expectWhole();
    } finally {
      await proxy.close();
    }
  });

  it('connections cut mid-body (chunks, the manifest, lock renewals) and lost answers (the manifest, the lock release): the client\'s retries complete the run; temporary files are never read as objects', async () => {
    // Uploads cut by the kills above may have left .tmp-* files; plant more where each kind of object lives.
    const [someChunk] = (await rig.chunkFiles()).keys();
    await mkdir(join(rig.root, 'locks'), { recursive: true });
    await writeFile(join(rig.root, 'chunks', someChunk!.slice(0, 2), '.tmp-0123456789abcdef'), 'not a chunk');
    await writeFile(join(rig.root, 'disks', DISK, '.tmp-fedcba9876543210'), 'not a manifest');
    await writeFile(join(rig.root, 'locks', '.tmp-00aa00aa00aa00aa'), 'not a lock');
    await rig.rewriteBlocks(CHANGED);
    const before = await rig.chunkFiles();
    const cutOnce = new Set<string>();
    const cuts = { chunk: 0, manifest: 0, lock: 0 };
    let chunkPuts = 0;
    let manifestPuts = 0;
    let lockDeletes = 0;
    const proxy = await startFaultProxy(rig.url, (req): FaultAction => {
      const url = req.url ?? '';
      // The release's answer is lost: its retry finds the lock gone, which is what it wanted.
      if (req.method === 'DELETE' && url.startsWith('/v1/objects/locks/')) return lockDeletes++ === 0 ? 'lose-answer' : 'pass';
      if (req.method !== 'PUT') return 'pass';
      if (url.startsWith('/v1/objects/chunks/')) {
        // Every fourth chunk, once: its retry goes through.
        if (chunkPuts++ % 4 === 0 && !cutOnce.has(url)) {
          cutOnce.add(url);
          cuts.chunk++;
          return 'cut-body';
        }
        return 'pass';
      }
      if (url.startsWith('/v1/objects/disks/')) {
        // The first manifest upload is cut; the second arrives but its answer is lost.
        manifestPuts++;
        if (manifestPuts === 1) {
          cuts.manifest++;
          return 'cut-body';
        }
        return manifestPuts === 2 ? 'lose-answer' : 'pass';
      }
      if (url.startsWith('/v1/objects/locks/') && req.headers['if-none-match'] === undefined && cuts.lock < 2) {
        cuts.lock++;
        return 'cut-body'; // a renewal
      }
      return 'pass';
    });
    try {
      const result = await rig.backup({ url: proxy.url, env: { BLOCKREP_LOCK_LEASE_MS: '1000' } });
      const done = rig.expectPublished(result);
      expect(cuts.chunk).toBeGreaterThanOrEqual(CHANGED / 8);
      expect(cuts.manifest).toBe(1);
      expect(cuts.lock).toBeGreaterThanOrEqual(1);
      expect(manifestPuts).toBe(3);
      expect(lockDeletes).toBe(2);
      const all = newBytes(before, await rig.chunkFiles());
      expect(all.count).toBe(CHANGED);
      expect(done.bytesSent).toBeLessThanOrEqual(all.bytes + NON_CHUNK_MARGIN);
      await rig.expectWhole();
      // The lock was released: nothing is left in locks/.
      expect((await readdir(join(rig.root, 'locks'))).filter((n) => !n.startsWith('.'))).toEqual([]);
    } finally {
      await proxy.close();
    }
  });

});

describe('disk lock leases over HTTP', () => {
  it('a lock left by a dead holder on another host is refused with its holder named, then taken over after its lease', async () => {
    await mkdir(join(rig.root, 'locks'), { recursive: true });
    const at = new Date().toISOString();
    await writeFile(lockFile(), JSON.stringify({ pid: 777, host: 'backup-client-2', createdAt: at, renewedAt: at, purpose: 'backup', lockId: 'a'.repeat(24), leaseMs: 1000 }));
    // The holder lives on while the first run tries: its lock is renewed (touched) every 0.1 s.
    let touching: Promise<unknown> = Promise.resolve();
    const renewing = setInterval(() => {
      const now = new Date();
      touching = utimes(lockFile(), now, now).catch(() => undefined);
    }, 100);
    await rig.rewriteBlocks(4);
    const refused = await rig.backup().finally(() => clearInterval(renewing));
    await touching; // its last renewal has landed: it dies now
    expect(refused.code).toBe(5);
    expect(refused.json).toMatchObject({ ok: false, code: 'REPO_LOCKED' });
    for (const part of [`disk ${DISK} is locked: backup by process 777 on backup-client-2 since ${at}`, 'last renewed', 'lease 1.0 s', 'next run takes it over', `remove locks/${DISK}.lock in ${rig.url}`]) {
      expect(refused.json.message).toContain(part);
    }
    // 1.1 s later by the repository's clock (the lock file's time), its 1 s lease has expired.
    const diedAt = new Date(Date.now() - 1100);
    await utimes(lockFile(), diedAt, diedAt);
    rig.expectPublished(await rig.backup());
    expect(await readLock()).toBeUndefined();
    await rig.expectWhole();
  });

  it('a live holder renews its lock; once it stops renewing (SIGSTOP) it is taken over, stops sending and fails with LOCK_LOST, publishing nothing', async () => {
    // Every block: more than A can have in flight when it is stopped, so a stop is visible.
    const changed = IMAGE_BLOCKS;
    await rig.rewriteBlocks(changed);
    const before = await rig.chunkFiles();
    // A: a slow upload (4 MiB at 0.5 MB/s) with a 1.5 s lease (renewed every 0.15 s).
    const a = rig.spawnBackup({ extra: ['--bwlimit', '512K'], env: { BLOCKREP_LOCK_LEASE_MS: '1500' } });
    await rig.waitForNewChunks(before, 3);
    const first = await readLock();
    expect(first?.pid).toBe(a.child.pid);
    // A renews it, and a contender is refused.
    await vi.waitFor(async () => expect((await readLock())?.renewedAt).not.toBe(first?.renewedAt), { timeout: 15_000, interval: 20 });
    const renewed = await readLock();
    expect(renewed?.pid).toBe(a.child.pid);
    expect(renewed?.renewedAt).not.toBe(first?.renewedAt);
    const contender = await openRepository(rig.url, { tokenFile: rig.tokenFile });
    await expect(contender.lockDisk(DISK, 'backup')).rejects.toMatchObject({ code: 'REPO_LOCKED', message: expect.stringContaining(`backup by process ${a.child.pid}`) });
    await contender.backend.close();

    // A stops renewing; after its lease, B takes the lock over.
    a.child.kill('SIGSTOP');
    // Its lease runs out by the repository's clock: its lock file's time stops moving.
    await vi.waitFor(async () => expect(Date.now() - (await stat(lockFile())).mtimeMs).toBeGreaterThan(1500), { timeout: 15_000, interval: 20 });
    const b = rig.spawnBackup();
    for (let i = 0; (await readLock())?.pid !== b.child.pid; i++) {
      if (i > 2000) throw new Error(`B never took the lock over: ${b.stderr()}`);
      await sleep(5);
    }
    b.child.kill('SIGSTOP');
    const sentByA = newBytes(before, await rig.chunkFiles()).count;
    a.child.kill('SIGCONT');
    const lost = await a.exit;
    expect(lost.code, lost.stdout + lost.stderr).toBe(5);
    expect(lost.json).toMatchObject({ ok: false, code: 'LOCK_LOST' });
    expect(lost.json.message).toContain(`it is now held by backup by process ${b.child.pid}`);
    expect(lost.json.message).toContain('Nothing was published');
    // A stopped sending (what its rate limiter had let through while it was stopped aside)
    // rather than upload the rest, and left B's lock alone.
    expect(newBytes(before, await rig.chunkFiles()).count).toBeLessThan(changed);
    expect(sentByA).toBeLessThanOrEqual(changed / 2);
    expect((await readLock())?.pid).toBe(b.child.pid);
    expect(await rig.manifestFiles()).toEqual(rig.versions);
    b.child.kill('SIGCONT');
    rig.expectPublished(await b.exit);
    await rig.expectWhole();
  });
});
