import { fstat as fstatCb } from 'node:fs';
import { readdir, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { LocalBackend } from '../../src/backend/local/local-backend.js';
import { encodeChunk } from '../../src/chunk/index.js';
import { Repository } from '../../src/repository/index.js';
import { tempDir } from '../support/temp-dir.js';
import { disposeTestManifests, testManifest } from '../support/test-manifests.js';
import { describeBackendConformance } from './backend-conformance.js';

describeBackendConformance('LocalBackend', async () => {
  const backend = new LocalBackend(await tempDir('blockrep-local-backend-'));
  return { backend, close: () => backend.close() };
});

describeBackendConformance('LocalBackend, sync level file', async () => {
  const backend = new LocalBackend(await tempDir('blockrep-local-backend-file-'), { syncLevel: 'file' });
  return { backend, close: () => backend.close() };
});

const fstatFd = promisify(fstatCb);

/** A syncfs that records the descriptor it was given and what the folder held at that moment. */
function recordingSyncfs(root: string) {
  const calls: Array<{ ino: number; chunkFiles: number }> = [];
  let fail: Error | undefined;
  const syncfs = async (fd: number): Promise<void> => {
    const st = await fstatFd(fd);
    calls.push({ ino: st.ino, chunkFiles: await countChunkFiles(root) });
    if (fail) {
      const err = fail;
      fail = undefined;
      throw err;
    }
  };
  return { calls, syncfs, failNext: (err: Error) => (fail = err) };
}

async function countChunkFiles(root: string): Promise<number> {
  let n = 0;
  for (const dir of await readdir(join(root, 'chunks')).catch(() => [] as string[])) {
    n += (await readdir(join(root, 'chunks', dir))).filter((f) => !f.startsWith('.tmp-')).length;
  }
  return n;
}

const chunk = () => encodeChunk(Buffer.from(`chunk ${Math.random()}`.repeat(50)));

describe('LocalBackend: when deferred writes become durable', () => {
  it('sync level filesystem: chunk writes call no syncfs; flush calls it once, on a descriptor of the root, after every chunk is in place', async () => {
    const root = await tempDir('blockrep-local-sync-');
    const rec = recordingSyncfs(root);
    const backend = new LocalBackend(root, { syncFileSystem: rec.syncfs });
    const chunks = [chunk(), chunk(), chunk()];
    for (const c of chunks) await backend.write(Repository.chunkKey(c.id), c.blob, { deferSync: true });
    expect(rec.calls).toHaveLength(0);
    await backend.flush();
    expect(rec.calls).toEqual([{ ino: (await stat(root)).ino, chunkFiles: 3 }]);
    // Nothing new since: the next flush has nothing to sync.
    await backend.flush();
    expect(rec.calls).toHaveLength(1);
    expect(backend.effectiveSyncLevel).toBe('filesystem');
    await backend.close();
  });

  it('a write that is not deferred (a manifest, a lock) with chunks pending makes them durable first, by the same syncfs', async () => {
    const root = await tempDir('blockrep-local-sync-');
    const rec = recordingSyncfs(root);
    const backend = new LocalBackend(root, { syncFileSystem: rec.syncfs });
    await backend.write('locks/a.lock', Buffer.from('{}'));
    expect(rec.calls).toHaveLength(0); // fsync of the file and its folder, no syncfs
    const c = chunk();
    await backend.write(Repository.chunkKey(c.id), c.blob, { deferSync: true });
    await backend.write('locks/a.lock', Buffer.from('{"renewed":1}'));
    expect(rec.calls).toHaveLength(1);
    await backend.close();
  });

  it('a failed syncfs fails the flush (IO) and leaves the writes pending: the next flush syncs again', async () => {
    const root = await tempDir('blockrep-local-sync-');
    const rec = recordingSyncfs(root);
    const backend = new LocalBackend(root, { syncFileSystem: rec.syncfs });
    const c = chunk();
    await backend.write(Repository.chunkKey(c.id), c.blob, { deferSync: true });
    rec.failNext(Object.assign(new Error('EIO: i/o error, syncfs'), { code: 'EIO' }));
    await expect(backend.flush()).rejects.toMatchObject({ code: 'IO' });
    await backend.flush();
    expect(rec.calls).toHaveLength(2);
    await backend.close();
  });

  it('sync level file, or no syncfs available (the addon missing): no syncfs, every chunk fsynced', async () => {
    const root = await tempDir('blockrep-local-sync-');
    const rec = recordingSyncfs(root);
    for (const backend of [new LocalBackend(root, { syncLevel: 'file', syncFileSystem: rec.syncfs }), new LocalBackend(root, { syncFileSystem: null })]) {
      const c = chunk();
      await backend.write(Repository.chunkKey(c.id), c.blob, { deferSync: true });
      await backend.flush();
      expect(backend.effectiveSyncLevel).toBe('file');
      await backend.close();
    }
    expect(rec.calls).toHaveLength(0);
  });

  it('close() closes the root descriptor it kept for syncfs', async () => {
    const root = await tempDir('blockrep-local-sync-');
    const fds = async () => (await readdir('/proc/self/fd')).length;
    const before = await fds();
    const backend = new LocalBackend(root, { syncFileSystem: async () => undefined });
    const c = chunk();
    await backend.write(Repository.chunkKey(c.id), c.blob, { deferSync: true });
    expect(await fds()).toBe(before + 1);
    await backend.close();
    expect(await fds()).toBe(before);
  });
});

describe('Repository over a LocalBackend: a crash before the sync', () => {
  it('a chunk stored cut short (what a power cut can leave of an unsynced file) counts as missing for a writer that names its size', async () => {
    const root = await tempDir('blockrep-local-torn-');
    const repo = await Repository.open(new LocalBackend(root), { create: true });
    const [whole, torn, empty] = [chunk(), chunk(), chunk()];
    for (const c of [whole, torn, empty]) await repo.putChunk(c);
    await repo.flush();
    const path = (id: string) => join(root, ...Repository.chunkKey(id).split('/'));
    await truncate(path(torn.id), torn.blob.length - 7);
    await truncate(path(empty.id), 0);
    const ids = [whole, torn, empty].map((c) => c.id);
    expect(await repo.hasChunks(ids)).toEqual([true, true, true]);
    expect(await repo.hasChunks(ids, { blobBytes: [whole, torn, empty].map((c) => c.blob.length) })).toEqual([true, false, false]);
    // Stored anew, it is whole again.
    await repo.putChunk(torn);
    expect((await stat(path(torn.id))).size).toBe(torn.blob.length);
    await repo.backend.close();
  });
});

describe('Repository.publishVersion over a LocalBackend: chunks are synced before the manifest exists', () => {
  it('the one syncfs runs after every chunk is in place and before the manifest is written; the manifest is there after', async () => {
    const root = await tempDir('blockrep-local-publish-');
    const manifests = async () => (await readdir(join(root, 'disks', 'd')).catch(() => [] as string[])).filter((f) => f.endsWith('.manifest'));
    const seen: Array<{ chunkFiles: number; manifests: number }> = [];
    const backend = new LocalBackend(root, {
      syncFileSystem: async () => {
        seen.push({ chunkFiles: await countChunkFiles(root), manifests: (await manifests()).length });
      },
    });
    const repo = await Repository.open(backend, { create: true });
    const chunks = [chunk(), chunk(), chunk(), chunk()];
    await Promise.all(chunks.map((c) => repo.putChunk(c)));
    const version = '20261203T120000.000Z-abcdef';
    await repo.publishVersion('d', version, await testManifest('d', version, chunks.map((c) => c.id)));
    expect(seen).toEqual([{ chunkFiles: 4, manifests: 0 }]);
    expect(await manifests()).toEqual([`${version}.manifest`]);
    await disposeTestManifests();
    await backend.close();
  });
});
