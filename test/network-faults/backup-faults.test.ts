import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFaultProxy, type FaultAction } from '../support/fault-proxy.js';
import { CHUNK_FILE_BYTES, DISK, FaultRig, NON_CHUNK_MARGIN, newBytes, sleep } from './network-fault-kit.js';

/**
 * A backup over HTTP interrupted at any point — client killed, server killed, connections cut
 * mid-body — leaves only whole versions, `verify` passes, and the run that follows (or the
 * client's own retries) completes without sending again what the repository already holds.
 * Real `blockrep serve` on loopback, real CLI processes, kill -9. Each case rewrites 64 blocks
 * (4 MiB of random data, 64 new chunks) of an 8 MiB raw image; `--bwlimit` stretches the upload
 * so that the kill lands in its middle, found by watching chunk files appear on the server.
 */
const CHANGED = 64;
let rig: FaultRig;

beforeAll(async () => {
  rig = await FaultRig.create('blockrep-net-faults-');
  rig.expectPublished(await rig.backup());
});
afterAll(async () => {
  await rig?.stop();
});

describe('backup over HTTP, interrupted', () => {
  it.each([3, 40])('kill -9 of the client once %i chunks are stored: only whole versions, and the next run sends none of them again', async (stored) => {
    await rig.rewriteBlocks(CHANGED);
    const before = await rig.chunkFiles();
    const run = rig.spawnBackup({ extra: ['--bwlimit', '4M'] });
    await rig.waitForNewChunks(before, stored);
    run.child.kill('SIGKILL');
    expect((await run.exit).code).toBe(137);
    await sleep(100); // requests the server had whole may still land: they count as held
    const held = newBytes(before, await rig.chunkFiles());
    expect(held.count).toBeGreaterThanOrEqual(stored);
    expect(held.count).toBeLessThan(CHANGED); // the kill landed mid-upload
    await rig.expectWhole();

    // The next run takes over the dead client's lock at once (same host, process gone).
    const rerun = rig.expectPublished(await rig.backup());
    const all = newBytes(before, await rig.chunkFiles());
    expect(all.count).toBe(CHANGED);
    expect(rerun.reusedChunks).toBe(held.count);
    expect(rerun.newChunks).toBe(CHANGED - held.count);
    // Not one chunk the repository held is sent again: at most the rest plus the manifest.
    expect(rerun.bytesSent).toBeLessThanOrEqual(all.bytes - held.bytes + NON_CHUNK_MARGIN);
    await rig.expectWhole();
  });

  it('kill -9 of the server during uploads, restarted on the same root: the client\'s retries finish the run', async () => {
    await rig.rewriteBlocks(CHANGED);
    const before = await rig.chunkFiles();
    const run = rig.spawnBackup({ extra: ['--bwlimit', '4M'] });
    await rig.waitForNewChunks(before, 10);
    await rig.killServer();
    const held = newBytes(before, await rig.chunkFiles());
    expect(held.count).toBeLessThan(CHANGED);
    expect(await rig.manifestFiles()).toEqual(rig.versions); // nothing half published
    await rig.startServer();
    const done = rig.expectPublished(await run.exit);
    const all = newBytes(before, await rig.chunkFiles());
    expect(all.count).toBe(CHANGED);
    // Only uploads in flight at the kill may have gone twice.
    expect(done.bytesSent).toBeLessThanOrEqual(all.bytes + 16 * CHUNK_FILE_BYTES + NON_CHUNK_MARGIN);
    await rig.expectWhole();

    // Nothing left to send: a run without changes sends its manifest and no chunk.
    const again = rig.expectPublished(await rig.backup());
    expect(again.newChunks).toBe(0);
    expect(again.bytesSent).toBeLessThan(NON_CHUNK_MARGIN);
  });

  it('kill -9 of the server while it receives the manifest: no version appears until the client\'s retry commits it whole', async () => {
    await rig.rewriteBlocks(CHANGED);
    const before = await rig.chunkFiles();
    let manifestPuts = 0;
    const proxy = await startFaultProxy(rig.url, (req): FaultAction => {
      if (req.method === 'PUT' && req.url?.startsWith('/v1/objects/disks/')) return manifestPuts++ === 0 ? 'hold-body' : 'pass';
      return 'pass';
    });
    try {
      const run = rig.spawnBackup({ url: proxy.url });
      const held = await proxy.nextHold(); // the server has all of the manifest but its last byte
      expect(newBytes(before, await rig.chunkFiles()).count).toBe(CHANGED);
      await rig.killServer();
      held.cut();
      // A spooled manifest cut short is no version.
      expect(await rig.manifestFiles()).toEqual(rig.versions);
      await rig.startServer();
      const done = rig.expectPublished(await run.exit);
      expect(manifestPuts).toBeGreaterThanOrEqual(2);
      expect(done.bytesSent).toBeLessThanOrEqual(newBytes(before, await rig.chunkFiles()).bytes + NON_CHUNK_MARGIN);
      await rig.expectWhole();
    } finally {
      await proxy.close();
    }
  });

  it('connections cut mid-body (chunks, the manifest, lock renewals) and a lost answer: the client\'s retries complete the run', async () => {
    await rig.rewriteBlocks(CHANGED);
    const before = await rig.chunkFiles();
    const cutOnce = new Set<string>();
    const cuts = { chunk: 0, manifest: 0, lock: 0 };
    let chunkPuts = 0;
    let manifestPuts = 0;
    const proxy = await startFaultProxy(rig.url, (req): FaultAction => {
      if (req.method !== 'PUT') return 'pass';
      const url = req.url ?? '';
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
      const result = await rig.backup({ url: proxy.url, extra: ['--bwlimit', '8M'], env: { BLOCKREP_LOCK_LEASE_MS: '1000' } });
      const done = rig.expectPublished(result);
      expect(cuts.chunk).toBeGreaterThanOrEqual(CHANGED / 4 - 1);
      expect(cuts.manifest).toBe(1);
      expect(cuts.lock).toBeGreaterThanOrEqual(1);
      expect(manifestPuts).toBe(3);
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

  it('temporary files that kills left behind are never read as objects', async () => {
    // The kills above may have left .tmp-* files (uploads cut by kill -9); plant some more.
    const { writeFile } = await import('node:fs/promises');
    const [someChunk] = (await rig.chunkFiles()).keys();
    await writeFile(join(rig.root, 'chunks', someChunk!.slice(0, 2), '.tmp-0123456789abcdef'), 'not a chunk');
    await writeFile(join(rig.root, 'disks', DISK, '.tmp-fedcba9876543210'), 'not a manifest');
    await writeFile(join(rig.root, 'locks', '.tmp-00aa00aa00aa00aa'), 'not a lock');
    await rig.expectWhole();
    rig.expectPublished(await rig.backup());
    await rig.expectWhole();
  });
});
