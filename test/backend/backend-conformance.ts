import { hostname } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Backend } from '../../src/backend/backend.js';
import { decodeChunk, encodeChunk, type EncodedChunk } from '../../src/chunk/chunk-codec.js';
import { ManifestReader } from '../../src/manifest/manifest-reader.js';
import { Repository } from '../../src/repository/repository.js';
import type { ManualClock } from '../../src/shared/clock.js';
import { diskIdToPathComponent } from '../../src/shared/disk-id.js';
import { patternBytes } from '../support/qemu-tools.js';
import { disposeTestManifests, testManifest } from '../support/test-manifests.js';

/**
 * What every Backend must do, run unchanged against each implementation (local-backend.test.ts,
 * http-backend.test.ts). The objects are repository-shaped (real chunk blobs, manifests, lock
 * JSON), since a server accepts nothing else; each test uses keys of its own.
 */
export interface BackendFixture {
  backend: Backend;
  /**
   * The clock a backend keeps its modification times by, when it takes one (MemoryBackend):
   * the suite then ages objects by moving it. Without one, it waits in real time.
   */
  clock?: ManualClock;
  close(): Promise<void>;
}

export function describeBackendConformance(name: string, setup: () => Promise<BackendFixture>): void {
  describe(`Backend conformance: ${name}`, () => {
    let fixture: BackendFixture;
    let backend: Backend;
    let repo: Repository;
    let seed = 1000;
    const chunk = (bytes = 4096): EncodedChunk => encodeChunk(patternBytes(bytes, seed++));
    const lockKey = (disk: string): string => `locks/${diskIdToPathComponent(disk)}.lock`;
    const lockBody = (purpose: string): Buffer => Buffer.from(JSON.stringify({ pid: process.pid, host: hostname(), createdAt: new Date(now()).toISOString(), purpose }));
    const now = (): number => fixture.clock?.now() ?? Date.now();
    const pass = async (ms: number): Promise<void> => {
      if (fixture.clock) await fixture.clock.advance(ms);
      else await new Promise((r) => setTimeout(r, ms));
    };

    beforeAll(async () => {
      fixture = await setup();
      backend = fixture.backend;
      // First, while the location is still empty: a repository is made (or found) on it.
      repo = await Repository.open(backend, { create: true, ...(fixture.clock ? { clock: fixture.clock } : {}) });
    });
    afterAll(async () => {
      await fixture?.close();
      await disposeTestManifests();
    });

    it('reports the size of an object, and undefined for a missing one', async () => {
      const c = chunk();
      const key = Repository.chunkKey(c.id);
      expect(await backend.size(key)).toBeUndefined();
      expect(await backend.write(key, c.blob)).toBe(c.blob.byteLength);
      expect(await backend.size(key)).toBe(c.blob.byteLength);
    });

    it('reads whole objects and byte ranges; past the end is short or empty, like a file', async () => {
      const c = chunk(64 * 1024);
      const key = Repository.chunkKey(c.id);
      await backend.write(key, c.blob);
      const blob = Buffer.from(c.blob);
      expect((await backend.read(key)).equals(blob)).toBe(true);
      expect((await backend.read(key, 0, 12)).equals(blob.subarray(0, 12))).toBe(true);
      expect((await backend.read(key, 100, 1000)).equals(blob.subarray(100, 1100))).toBe(true);
      expect((await backend.read(key, 1000)).equals(blob.subarray(1000))).toBe(true);
      expect((await backend.read(key, blob.length - 10, 100)).equals(blob.subarray(blob.length - 10))).toBe(true);
      expect((await backend.read(key, blob.length + 5, 10)).length).toBe(0);
      expect((await backend.read(key, 7, 0)).length).toBe(0);
    });

    it('throws NOT_FOUND reading a missing object', async () => {
      const key = Repository.chunkKey(chunk().id);
      await expect(backend.read(key)).rejects.toMatchObject({ code: 'NOT_FOUND' });
      await expect(backend.read(key, 0, 12)).rejects.toMatchObject({ code: 'NOT_FOUND' });
      await expect(backend.read(key, 0, 0)).rejects.toMatchObject({ code: 'NOT_FOUND' });
    });

    it('writes a streamed body in pieces', async () => {
      const c = chunk(3 * 1024 * 1024 + 17);
      const key = Repository.chunkKey(c.id);
      const blob = Buffer.from(c.blob);
      const pieces = async function* (): AsyncIterable<Uint8Array> {
        for (let pos = 0; pos < blob.length; pos += 100_000) yield blob.subarray(pos, pos + 100_000);
      };
      expect(await backend.write(key, pieces())).toBe(blob.length);
      expect(decodeChunk(await backend.read(key), c.id).length).toBe(3 * 1024 * 1024 + 17);
    });

    it('refuses an exclusive write over an existing object (EXISTS) and keeps the first', async () => {
      const key = lockKey('conf/exclusive');
      const first = lockBody('first');
      await backend.write(key, first, { exclusive: true });
      await expect(backend.write(key, lockBody('second'), { exclusive: true })).rejects.toMatchObject({ code: 'EXISTS' });
      expect((await backend.read(key)).equals(first)).toBe(true);
    });

    it('replaces an object on a plain write', async () => {
      const key = lockKey('conf/replace');
      await backend.write(key, lockBody('one'));
      const two = lockBody('two, longer than one');
      await backend.write(key, two);
      expect((await backend.read(key)).equals(two)).toBe(true);
    });

    it('removes objects, and removing a missing one is not an error', async () => {
      const key = lockKey('conf/remove');
      await backend.write(key, lockBody('x'));
      await backend.remove(key);
      expect(await backend.size(key)).toBeUndefined();
      await backend.remove(key);
    });

    it('makes deferred writes durable on flush', async () => {
      const chunks = [chunk(), chunk(), chunk()];
      for (const c of chunks) await backend.write(Repository.chunkKey(c.id), c.blob, { deferSync: true });
      await backend.flush();
      expect(await repo.hasChunks(chunks.map((c) => c.id))).toEqual([true, true, true]);
    });

    it('gc: a touch (sizes with touch) makes an object young; removeIfOlder removes only what is older than its cutoff', async () => {
      const [old, touched] = [chunk(), chunk()];
      const [oldKey, touchedKey] = [Repository.chunkKey(old.id), Repository.chunkKey(touched.id)];
      await backend.write(oldKey, old.blob);
      await backend.write(touchedKey, touched.blob);
      const mtimes = new Map<string, number>();
      for await (const o of backend.list(`chunks/${touched.id.slice(0, 2)}/`)) if (o.mtimeMs !== undefined) mtimes.set(o.key, o.mtimeMs);
      const written = mtimes.get(touchedKey)!;
      expect(written).toEqual(expect.any(Number));
      await pass(60);
      expect(await backend.sizes([touchedKey, Repository.chunkKey(chunk().id)], { touch: true })).toEqual([touched.blob.byteLength, undefined]);
      const cutoff = written + 30; // after both writes, before the touch
      expect(await backend.removeIfOlder!(touchedKey, cutoff)).toBe('young');
      expect(await backend.removeIfOlder!(oldKey, cutoff)).toBe('removed');
      expect(await backend.size(oldKey)).toBeUndefined();
      expect(await backend.removeIfOlder!(oldKey, cutoff)).toBe('missing');
      expect(await backend.size(touchedKey)).toBe(touched.blob.byteLength);
      expect(await backend.removeStaleTemps!(0)).toEqual({ files: 0, bytes: 0 });
    });

    it('lists the objects under a prefix, recursively and sorted, with their sizes', async () => {
      const a = lockKey('conf-list/a');
      const b = lockKey('conf-list/b');
      await backend.write(b, lockBody('b'));
      await backend.write(a, lockBody('aa'));
      const locks = [];
      for await (const o of backend.list('locks/')) if (o.key.startsWith('locks/conf-list')) locks.push(o);
      expect(locks).toEqual([
        { key: a, size: lockBody('aa').length, mtimeMs: expect.any(Number) },
        { key: b, size: lockBody('b').length, mtimeMs: expect.any(Number) },
      ]);
      expect(Math.abs(locks[0]!.mtimeMs! - now())).toBeLessThan(60_000);
      const c = chunk();
      await backend.write(Repository.chunkKey(c.id), c.blob);
      const all = [];
      for await (const o of backend.list('chunks/')) all.push(o.key);
      expect(all).toContain(Repository.chunkKey(c.id));
      expect([...all].sort()).toEqual(all);
      const folder = [];
      for await (const o of backend.list(`chunks/${c.id.slice(0, 2)}/`)) folder.push(o.key);
      expect(folder).toContain(Repository.chunkKey(c.id));
      expect(folder.every((k) => k.startsWith(`chunks/${c.id.slice(0, 2)}/`))).toBe(true);
      const none = [];
      for await (const o of backend.list(`disks/${diskIdToPathComponent('conf/never-written')}/`)) none.push(o);
      expect(none).toEqual([]);
    });

    it('can stop a listing early', async () => {
      for (const d of ['x1', 'x2', 'x3']) await backend.write(lockKey(`conf-early/${d}`), lockBody(d));
      for await (const o of backend.list('locks/')) {
        expect(o.key).toMatch(/^locks\//);
        break;
      }
      expect(await backend.size(lockKey('conf-early/x1'))).toBeGreaterThan(0);
    });

    it('answers sizes() for many keys at once, in order, across batches', async () => {
      const present = [chunk(), chunk(1000), chunk(20_000)];
      for (const c of present) await backend.write(Repository.chunkKey(c.id), c.blob);
      const keys: string[] = [];
      for (let i = 0; i < 2500; i++) keys.push(Repository.chunkKey(encodeChunk(Buffer.from(`absent ${i}`), { compress: false }).id));
      keys.splice(3, 0, Repository.chunkKey(present[0]!.id));
      keys.splice(1500, 0, Repository.chunkKey(present[1]!.id));
      keys.push(Repository.chunkKey(present[2]!.id));
      const sizes = await backend.sizes(keys);
      expect(sizes).toHaveLength(keys.length);
      expect(sizes[3]).toBe(present[0]!.blob.byteLength);
      expect(sizes[1500]).toBe(present[1]!.blob.byteLength);
      expect(sizes.at(-1)).toBe(present[2]!.blob.byteLength);
      expect(sizes.filter((s) => s !== undefined)).toHaveLength(3);
      expect(await backend.sizes([])).toEqual([]);
    });

    describe('with the repository layer on top', () => {
      it('publishes versions once, lists them, and reads them back checked', async () => {
        const chunks = [chunk(), chunk()];
        for (const c of chunks) await repo.putChunk(c);
        const v1 = '20261126T033504.123Z-aaaaaa';
        const v2 = '20261126T033505.000Z-bbbbbb';
        const m1 = await testManifest('conf/vm', v1, [chunks[0]!.id, undefined, chunks[1]!.id]);
        await repo.publishVersion('conf/vm', v1, m1);
        await repo.publishVersion('conf/vm', v2, await testManifest('conf/vm', v2, [chunks[1]!.id, chunks[1]!.id, undefined], v1));
        expect(await repo.listVersions('conf/vm')).toEqual([v1, v2]);
        expect(await repo.listDisks()).toContain('conf/vm');
        const reader = await repo.openManifest('conf/vm', v1);
        const entries = await reader.entries(0, 3);
        expect(entries.ids.toString('hex', 0, 32)).toBe(chunks[0]!.id);
        expect((await repo.versionHeader('conf/vm', v2)).meta.parentVersionId).toBe(v1);
        // A commit that loses the race fails cleanly and leaves the first.
        await expect(repo.publishVersion('conf/vm', v1, await testManifest('conf/vm', v1, [undefined, undefined, undefined], null))).rejects.toMatchObject({ code: 'EXISTS' });
        // (Read from the backend itself: the client's manifest cache is not what is tested here.)
        expect((await ManifestReader.open(backend, Repository.manifestKey('conf/vm', v1))).header.zeroBlocks).toBe(1);
      });

      it('tells which chunks it holds', async () => {
        const held = chunk();
        await repo.putChunk(held);
        await repo.flush();
        const absent = chunk();
        expect(await repo.hasChunks([absent.id, held.id])).toEqual([false, true]);
        expect(await repo.hasChunk(held.id)).toBe(true);
        expect((await repo.getChunk(held.id)).length).toBe(4096);
        await expect(repo.getChunk(absent.id)).rejects.toMatchObject({ code: 'CHUNK_MISSING' });
      });

      it('lets one writer lock a disk', async () => {
        const lock = await repo.lockDisk('conf/locked', 'backup');
        await expect(repo.lockDisk('conf/locked', 'backup')).rejects.toMatchObject({ code: 'REPO_LOCKED' });
        await lock.release();
        await (await repo.lockDisk('conf/locked', 'backup')).release();
      });
    });
  });
}
